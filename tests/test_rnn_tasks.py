"""The recurrent space's data, search and retraining tasks, at tiny sizes (vocabulary ~50, 8 units, BPTT 5, batch 2)."""
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from darts_jax.training.config_utils import load_config_module
from darts_jax import rnn
from darts_jax.data import DatasetNotFoundError, text
from darts_jax.bilevel import step as bilevel_step
from darts_jax.dynamics import relaxations
from darts_jax.rnn import genotypes as rnn_genotypes
from darts_jax.spaces import rnn as rnn_space
from darts_jax.spaces import rnn_retraining
from darts_jax.tasks import retrain, search
from darts_jax.training import optimizers, reporting
from darts_jax.training.checkpointing import Checkpointer

retrain_ptb = load_config_module('retrain_ptb')
search_ptb = load_config_module('search_ptb')
WORDS = [f'w{i}' for i in range(44)] + ['<unk>']


def write_corpus(directory, seed=0):
  """A PTB-format corpus of random sentences over 45 words (+ <eos>)."""
  rng = np.random.default_rng(seed)
  for split, lines in (('train', 12), ('valid', 6), ('test', 4)):
    sentences = [' '.join(rng.choice(WORDS, rng.integers(3, 8))) for _ in range(lines)]
    if split == 'train':
      sentences[0] = ' '.join(WORDS)  # every word in the training vocabulary
    (directory / f'ptb.{split}.txt').write_text(''.join(f' {s} \n' for s in sentences))
  return directory


@pytest.fixture(scope='module')
def corpus_dir(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp('ptb'))


def _override(config, overrides):
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def _tiny(config, corpus_dir, **overrides):
  config.data.dir = str(corpus_dir)
  config.batch_size, config.eval_batch_size, config.bptt = 2, 2, 5
  config.max_steps_per_epoch = 3
  config.model.emsize = config.model.nhid = 8
  config.log_every_steps = 2
  config.checkpoint_every_minutes = 1e-9  # a time-based checkpoint at every log step
  config.progress = False
  config.compilation_cache_dir = ''
  return _override(config, overrides)


def search_config(corpus_dir, **overrides):
  config = _tiny(search_ptb.get_config(), corpus_dir, num_epochs=2, hypergradient='first_order')
  config.model.steps = 2
  return _override(config, overrides)


# ---------------------------------------------------------------------------------------------------------------------
# Data.

def test_reader_appends_eos_and_maps_unknown_words_to_unk(corpus_dir, tmp_path):
  corpus = text.load_text_corpus('ptb', corpus_dir)
  assert len(corpus.vocab) == 46 and corpus.vocab[:2] == ['w0', 'w1'] and '<eos>' in corpus.vocab
  first_line = (corpus_dir / 'ptb.train.txt').read_text().splitlines()[0].split()
  assert [corpus.vocab[i] for i in corpus.train[:46]] == first_line + ['<eos>']
  assert corpus.train.dtype == np.int32 and len(corpus.valid) and len(corpus.test)
  (tmp_path / 'train.txt').write_text('a b <unk>\n')  # the original's file names
  (tmp_path / 'valid.txt').write_text('a zebra\n')
  (tmp_path / 'test.txt').write_text('b\n')
  other = text.load_text_corpus('wikitext2', tmp_path)
  assert [other.vocab[i] for i in other.valid] == ['a', '<unk>', '<eos>']


def test_missing_corpus_says_where_the_files_go(tmp_path):
  with pytest.raises(DatasetNotFoundError, match=f'put ptb.train.txt, ptb.valid.txt, ptb.test.txt in {tmp_path}'):
    text.load_text_corpus('ptb', tmp_path)
  with pytest.raises(ValueError, match='Unknown text dataset'):
    text.load_text_corpus('ptb2', tmp_path)


def test_tokenize_like_ptb():
  assert text.tokenize_like_ptb("And the LORD's word, in 1611: 'Let there be light.'") == [
      'and', 'the', 'lord', "'s", 'word', 'in', 'N', 'let', 'there', 'be', 'light']


def test_bptt_lengths_cover_the_stream_and_depend_on_seed_and_epoch():
  lengths = text.bptt_lengths(1000, 35, seed=0, epoch=0)
  assert lengths == text.bptt_lengths(1000, 35, seed=0, epoch=0) != text.bptt_lengths(1000, 35, seed=0, epoch=1)
  assert sum(lengths) == 999 and max(lengths) <= 55 and min(lengths[:-1]) >= 5
  search = text.bptt_lengths(10_000, 35, seed=0, epoch=0, jitter=0.0)
  assert set(search[:-1]) == {35, 17}  # int(35 / 2) with probability 0.05


def test_lm_batches_read_the_streams_as_the_original():
  streams = text.batchify(np.arange(40, dtype=np.int32), 2)  # rows 0..19 and 20..39
  batches = list(text.lm_batches(streams, [5, 3, 11], max_length=6))
  tokens, targets, length, first = batches[1]
  np.testing.assert_array_equal(tokens[:, :3], [[5, 6, 7], [25, 26, 27]])
  np.testing.assert_array_equal(targets[:, :3], tokens[:, :3] + 1)
  assert (tokens[:, 3:] == 0).all() and list(length) == [3, 3] and list(first) == [0, 0]
  assert list(batches[0][3]) == [1, 1]
  assert batches[2][2][0] == 6  # capped at max_length... and at the stream's end (19 - 8 = 11)
  resumed = list(text.lm_batches(streams, [5, 3, 11], max_length=6, start_step=1))
  np.testing.assert_array_equal(resumed[0][0], tokens)
  # Validation batches: the training positions wrapped around the stream, read_length long.
  val = list(text.lm_batches(text.batchify(np.arange(12, dtype=np.int32), 2), [5, 3], max_length=5,
                             read_length=5))
  np.testing.assert_array_equal(val[1][0][0, :val[1][2][0]], [0, 1, 2, 3, 4])  # position 5 wraps to 0
  inputs, targets, lengths = text.eval_chunks(np.arange(21, dtype=np.int32), 2, 4)
  assert inputs.shape == (3, 2, 4) and list(lengths) == [4, 4, 1]
  np.testing.assert_array_equal(targets[2, :, 0], [9, 19])


# ---------------------------------------------------------------------------------------------------------------------
# Search.

@pytest.fixture(scope='module')
def reference_search(tmp_path_factory, corpus_dir):
  workdir = tmp_path_factory.mktemp('rnn_search')
  state = search.search(search_config(corpus_dir, checkpoint_every_minutes=0.0), workdir)
  return workdir, state


def _records(workdir):
  return [{k: v for k, v in r.items() if k not in ('epoch_time_s', 'images_per_s')}
          for r in reporting.read_jsonl(workdir / 'metrics.jsonl')]


def test_search_writes_the_run_artifacts(reference_search):
  workdir, state = reference_search
  for name in ('config.json', 'metrics.jsonl', 'genotypes.jsonl', 'alphas.jsonl', 'genotype.json', 'alphas.npz',
               'recurrent.dot', 'recurrent.png', 'curves.png'):
    assert (workdir / name).is_file(), name
  alphas = np.load(workdir / 'alphas.npz')['recurrent']
  np.testing.assert_array_equal(alphas, state.alphas)
  assert rnn.genotype_from_json((workdir / 'genotype.json').read_text()) == rnn.derive_genotype(alphas, steps=2)
  records = reporting.read_jsonl(workdir / 'metrics.jsonl')
  epochs = [r for r in records if 'epoch' in r]
  assert [r['step'] for r in epochs] == [3, 6]
  for r in epochs:
    assert r['valid_ppl'] == pytest.approx(np.exp(r['valid_loss'])) and 0 <= r['valid_accuracy'] <= 1
    assert r['alpha_entropy'] < np.log(5)
  steps = [r for r in records if 'epoch' not in r]
  assert all(r['arch_grad_norm'] > 0 and r['seq_len'] in (2, 5) and r['lr'] == 20.0 * r['seq_len'] / 5
             for r in steps)
  hidden, hidden_valid = state.carry['hidden'], state.carry['hidden_valid']
  assert hidden.shape == hidden_valid.shape == (2, 8) and np.abs(hidden).sum() > 0


def test_search_resumes_bit_identically_after_an_interruption(reference_search, corpus_dir, tmp_path, monkeypatch,
                                                              caplog):
  workdir, state = reference_search
  save = Checkpointer.save

  def interrupted_save(self, step, *args, **kwargs):
    if step == 6:  # the end of epoch 2; the latest checkpoint is step 4, mid epoch 2
      raise KeyboardInterrupt
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(Checkpointer, 'save', interrupted_save)
  with pytest.raises(KeyboardInterrupt):
    search.search(search_config(corpus_dir), tmp_path)
  monkeypatch.setattr(Checkpointer, 'save', save)
  with caplog.at_level(logging.INFO):
    resumed = search.search(search_config(corpus_dir), tmp_path)
  assert 'Resuming from step 4 (epoch 1, step 1 of the epoch)' in caplog.text
  for field in ('alphas', 'params', 'batch_stats', 'carry', 'arch_opt_state'):
    jax.tree.map(np.testing.assert_array_equal, getattr(resumed, field), getattr(state, field))
  assert _records(tmp_path) == _records(workdir)
  assert (tmp_path / 'alphas.jsonl').read_text() == (workdir / 'alphas.jsonl').read_text()


# The chain is the generic `one_step_stages`, whose passes tests/test_second_order_impl.py compares on the CNN space.
@pytest.mark.slow
@pytest.mark.parametrize('method', ['fd', 'exact'])
def test_second_order_passes_chained_equal_direct(method):
  """The recurrent space clips its virtual step (grad_clip) and adds TAR to the weight step only, with its own dropout
  key: the chained passes (one compiled gradient, the weight step's pass selected inside the loop) must compute what
  the direct ones do, over two steps with the hidden states carried."""
  model = rnn.RNNModelSearch(ntoken=20, ninp=8, nhid=8, steps=2, dropout=0.2, dropouth=0.1, dropoutx=0.2,
                             dropouti=0.1)
  problem = rnn_space.search_problem(model, learning_rate=20.0, bptt=5, weight_decay=5e-7, grad_clip=0.25, tar=1e-3)
  state = rnn_space.create_search_state(jax.random.key(0), model, 2, optimizers.clipped_sgd(weight_decay=5e-7,
                                                                                             grad_clip=0.25),
                                        optimizers.arch_optimizer(3e-2, b1=0.9, b2=0.999, weight_decay=1e-3))
  rng = np.random.default_rng(0)
  batches = [tuple((rng.integers(0, 20, (2, 5), np.int32), rng.integers(0, 20, (2, 5), np.int32),
                    np.full(2, 5, np.int32), np.full(2, int(i == 0), np.int32)) for _ in range(2)) for i in range(2)]
  states = {}
  for passes in ('chained', 'direct'):
    step = jax.jit(bilevel_step.make_search_step(problem, method=method, passes=passes))
    states[passes] = state
    for train, val in batches:
      states[passes], metrics = step(states[passes], train, val)
      assert bool(metrics['finite'])
  # The same float32 arithmetic in two programs that XLA orders differently; fd divides the gradients' rounding by
  # 2R, and Adam's m/sqrt(v) magnifies the difference of small gradients.
  atol = 3e-5 if method == 'fd' else 1e-6
  for field in ('alphas', 'params', 'carry'):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol),
                 getattr(states['chained'], field), getattr(states['direct'], field))
  # Two Adam steps of 3e-2 take the alphas from 1e-3 · N(0, 1) to about ±6e-2: far beyond the tolerance.
  assert np.abs(np.asarray(states['direct'].alphas)).max() > 3e-2


def _pc_darts_case(rng, dtype):
  """A 2-node supernet of 8 units with PC-DARTS's options (K=2, edge normalisation) taking mixing weights, without
  dropout (the init's node matrices, ±0.04, leave the activations nearly linear: the tests scale them); O(1) alphas (a non-uniform softmax); two (train, validation) batches of 2 x 5 tokens that continue the
  carried hidden states."""
  model = rnn.RNNModelSearch(ntoken=20, ninp=8, nhid=8, steps=2, dropout=0.0, dropouth=0.0, dropoutx=0.0,
                             dropouti=0.0, mixing='weights', partial_channels=2, edge_normalization=True)
  alphas = {rnn_genotypes.OPS_KEY: jnp.asarray(rng.normal(size=(3, 5)), dtype),
            rnn_genotypes.EDGES_KEY: [jnp.asarray(rng.normal(size=i + 1), dtype) for i in range(2)]}
  hidden = [jnp.asarray(0.5 * rng.normal(size=(2, 8)), dtype) for _ in range(2)]
  batches = tuple((rng.integers(0, 20, (2, 5), np.int32), rng.integers(0, 20, (2, 5), np.int32),
                   np.full(2, 5, np.int32), np.zeros(2, np.int32)) for _ in range(2))
  return model, alphas, hidden, batches


@pytest.mark.slow
def test_exact_hypergradient_with_pc_darts_is_autodiff_through_the_virtual_step_in_float64():
  """The bilevel step on the recurrent supernet with partial channels and edge normalisation (the space's problem,
  softmax relaxation) against ``jax.grad`` of ``L_val(w − η(∇_w L_train(w, α) + λw), α)`` written out here, in
  float64 (the clip set out of reach: its coefficient is 1; tests above cover it): with an SGD(1) architecture
  optimizer the step's alpha update is ``−h``, β's included. Tolerance: float64 rounding through 5 time steps.
  Slow: a second-order program of the recurrent scan and its autodiff reference to compile (~30 s on 2 cores)."""
  eta, weight_decay = 0.5, 1e-3
  with jax.enable_x64(True):
    model, alphas, (hidden, hidden_valid), (train, val) = _pc_darts_case(np.random.default_rng(0), jnp.float64)
    softmax = lambda alphas: jax.tree.map(lambda a: jax.nn.softmax(a, -1), alphas)
    variables = model.init(jax.random.key(0), train[0], hidden, softmax(alphas), train=False)
    # Node matrices of O(1) entries, as in the attack's test (`_pc_darts_case`).
    params = {**variables['params'], 'Ws': 25 * variables['params']['Ws']}
    batch_stats = variables['batch_stats']
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float64)}
    problem = rnn_space.search_problem(model, learning_rate=eta, bptt=5, weight_decay=weight_decay, grad_clip=1e9,
                                       tar=0.0)
    weight_tx, sgd = optimizers.clipped_sgd(weight_decay=weight_decay, grad_clip=1e9), optax.sgd(1.0)
    state = bilevel_step.SearchState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, alphas=alphas,
        weight_opt_state=weight_tx.init(params), arch_opt_state=sgd.init(alphas), rng=jax.random.key(1),
        carry={'hidden': hidden, 'hidden_valid': hidden_valid}, weight_tx=weight_tx, arch_tx=sgd)

    def nll(params, alphas, batch, hidden):
      (log_probs, *_), _ = model.apply({'params': params, 'batch_stats': batch_stats}, batch[0], hidden,
                                       softmax(alphas), train=True, rngs={'dropout': jax.random.key(0)},
                                       mutable=['batch_stats'])
      return -jnp.mean(jnp.take_along_axis(log_probs, batch[1][..., None], -1))

    def validation_after_virtual_step(alphas):
      g = jax.grad(nll)(params, alphas, train, hidden)
      w_prime = jax.tree.map(lambda w, g_: w - eta * (g_ + weight_decay * w), params, g)
      return nll(w_prime, alphas, val, hidden_valid)

    expected = jax.jit(jax.grad(validation_after_virtual_step))(alphas)
    step = jax.jit(bilevel_step.make_search_step(problem, method='exact', relaxation=relaxations.Relaxation()))
    stepped, _ = step(state, train, val)
    assert {a.dtype for a in jax.tree.leaves(stepped.alphas)} == {jnp.dtype(jnp.float64)}
    jax.tree.map(lambda a, b, e: np.testing.assert_allclose(a - b, e, rtol=1e-9, atol=1e-13),
                 alphas, stepped.alphas, expected)
    # Every leaf has a gradient to check, but node 0's one β: the softmax of one entry is 1.
    assert all(np.abs(e).max() > 1e-6 for e in jax.tree.leaves(expected) if e.size > 1)


@pytest.mark.slow  # the attack is the generic `WeightPerturbation`: tests/test_sdarts_adv.py covers it on the CNN space
def test_sdarts_adv_attacks_the_weight_step_only():
  """SDARTS-ADV on the recurrent space (its supernet takes the relaxation's mixing weights, β's included): the
  architecture step is the plain one, written out here (first order, SGD(1): ``α − ∇_α L_val``; float32 rounding of
  two programs), and the weight step trains at weights that raise its loss above that at the unperturbed ones."""
  model, alphas, (hidden, hidden_valid), (train, val) = _pc_darts_case(np.random.default_rng(1), jnp.float32)
  problem = rnn_space.search_problem(model, learning_rate=20.0, bptt=5, weight_decay=5e-7, grad_clip=0.25, tar=0.0)
  state = rnn_space.create_search_state(jax.random.key(0), model, 2,
                                        optimizers.clipped_sgd(weight_decay=5e-7, grad_clip=0.25), optax.sgd(1.0))
  params = {**state.params, 'Ws': 25 * state.params['Ws']}
  state = state.replace(params=params, alphas=alphas, carry={'hidden': hidden, 'hidden_valid': hidden_valid})

  def attack(key, weights, step, loss_and_grad):
    return relaxations.adversarial_perturbation(key, weights, 0.3, loss_and_grad, steps=2)

  step = bilevel_step.make_search_step(problem, method='first_order', relaxation=relaxations.Relaxation(),
                                       weight_perturbation=attack)
  attacked, metrics = jax.jit(step)(state, train, val)

  @jax.jit
  def plain(alphas):
    def nll(alphas, batch, hidden):
      (log_probs, *_), _ = model.apply({'params': params, 'batch_stats': state.batch_stats}, batch[0], hidden,
                                       jax.tree.map(jax.nn.softmax, alphas), train=True,
                                       rngs={'dropout': jax.random.key(0)}, mutable=['batch_stats'])
      return -jnp.mean(jnp.take_along_axis(log_probs, batch[1][..., None], -1))
    new_alphas = jax.tree.map(lambda a, g: a - g, alphas, jax.grad(nll)(alphas, val, hidden_valid))
    return new_alphas, nll(new_alphas, train, hidden)

  plain_alphas, plain_loss = plain(alphas)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), attacked.alphas, plain_alphas)
  assert metrics['loss'] > plain_loss + 1e-2


def test_search_config_errors(corpus_dir, tmp_path):
  with pytest.raises(ValueError, match="'unrolled' takes unclipped SGD steps"):
    search.search(search_config(corpus_dir, hypergradient='unrolled'), tmp_path / 'a')
  with pytest.raises(ValueError, match='must equal model.nhid'):
    search.search(search_config(corpus_dir, **{'model.emsize': 4}), tmp_path / 'b')
  with pytest.raises(DatasetNotFoundError, match='put ptb.train.txt'):
    search.search(search_config(tmp_path), tmp_path / 'c')
  assert not (tmp_path / 'c' / 'checkpoints').exists()


# ---------------------------------------------------------------------------------------------------------------------
# Retraining.

def test_retrain_reports_perplexity(corpus_dir, tmp_path):
  genotype = rnn.Genotype(recurrent=[('relu', 0), ('tanh', 1)], concat=[1, 2])  # 2 nodes: a fast compile
  config = _tiny(retrain_ptb.get_config(), corpus_dir, num_epochs=2, test_batch_size=2,  # shares the valid program
                 genotype=rnn.genotype_to_repr(genotype), checkpoint_every_minutes=0.0)
  results = retrain.retrain(config, tmp_path)
  assert json.loads((tmp_path / 'results.json').read_text()) == json.loads(json.dumps(results))
  assert results['params'] == rnn.num_params(46, 8, 8, genotype) and results['dataset'] == 'ptb'
  assert results['test_ppl'] == pytest.approx(np.exp(results['test_loss'])) and 1 < results['test_ppl'] < 1e3
  epochs = [r for r in reporting.read_jsonl(tmp_path / 'metrics.jsonl') if 'epoch' in r]
  assert results['valid_ppl'] == pytest.approx(min(r['valid_ppl'] for r in epochs), rel=1e-5)
  assert (tmp_path / 'recurrent.png').is_file() and (tmp_path / 'curves.png').is_file()
  assert rnn.genotype_from_json((tmp_path / 'genotype.json').read_text()) == genotype
  with pytest.raises(ValueError, match='another'):
    retrain.retrain(_override(config, {'genotype': 'DARTS_V2'}), tmp_path)


def _host_state(**fields):
  params = {'w': np.zeros(2, np.float32)}
  base = dict(step=np.asarray(0), params=params, averaging=np.asarray(False), averaged_steps=np.asarray(0),
              avg_params=params, best_params=params, best_valid_loss=np.asarray(np.inf, np.float32),
              valid_history=np.zeros(10, np.float32), history_length=np.asarray(0), hidden=np.zeros((1, 1)),
              rng=jax.random.key(0))
  return rnn_retraining.RNNTrainState(**{**base, **fields})


def test_nt_asgd_switches_when_validation_is_worse_than_nonmono_epochs_back():
  state = _host_state()
  for epoch, loss in enumerate([5.0, 4.0, 4.5, 4.2]):  # 4.2 is worse than 4.0, two evaluations back
    state = state.replace(params={'w': np.full(2, epoch, np.float32)})
    state = optimizers.nt_asgd_update(state, loss, nonmono=1)
    assert bool(state.averaging) == (epoch == 3), epoch
  assert float(state.best_valid_loss) == 4.0 and state.best_params['w'][0] == 1  # the weights evaluated at 4.0
  np.testing.assert_array_equal(state.avg_params['w'], [3, 3])
  assert int(state.history_length) == 4
  after = optimizers.nt_asgd_update(state.replace(avg_params={'w': np.full(2, 7.0, np.float32)}), 3.0, nonmono=1)
  assert after.best_params['w'][0] == 7.0 and int(after.history_length) == 4  # averaged weights are evaluated


def test_asgd_average_is_the_mean_of_the_iterates_from_the_second_on():
  iterates = [1.0, 2.0, 4.0, 9.0]
  average = 0.0
  for k, w in enumerate(iterates, 1):
    average = float(optimizers.asgd_average(jnp.float32(average), jnp.float32(w), jnp.int32(k)))
  assert average == pytest.approx(np.mean(iterates[1:]))
