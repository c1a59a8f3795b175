"""The contract between the one train loop and a model family: `Task`, `TrainState`, `StepTools`.

A family subclasses `Task` and writes, at the least, `init`, `loss`, `evaluate` and `summarize`.
The loop builds the state, the optimizers (from the config), the data-parallel step, evaluation,
logging, checkpoints and resume around them. A family needs more only when its update is not
"one gradient of one loss, one optimizer step": then it overrides `update` and builds it from
`StepTools` (the exact global-mean gradient, an optimizer step on one named parameter set):

    class GANTask(Task):
        def update(self, state, batch, rng, tools):
            d_rng, g_rng = jax.random.split(rng)
            d_grads, d_sums = tools.mean_grads(self.d_loss(state.params['generator']),
                                               state.params['discriminator'], batch, d_rng)
            state = tools.apply_gradients(state, d_grads, 'discriminator')
            g_grads, g_sums = tools.mean_grads(self.g_loss(state.params['discriminator']),
                                               state.params['generator'], batch, g_rng)
            state = tools.apply_gradients(state, g_grads, 'generator')
            return state, {'count': d_sums['count'], 'd_loss': d_sums['loss'], 'g_loss': g_sums['loss']}

`rng` is already this step's (and, under pmap, this device's) key. A family never writes a
collective: `mean_grads` returns gradients of the *global* mean loss, and the loop adds the
returned sums over devices (keys ending in `_norm` are per-step values: averaged instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from lab import parallel

PyTree = Any
EMA = "ema"  # `TrainState.extra`'s entry for the parameters' moving average (`config.ema_decay`)
Optimizers = optax.GradientTransformation | Mapping[str, optax.GradientTransformation]


@dataclass(frozen=True)
class ExportSpec:
    """What `lab.export` needs to serve a trained model: a task's (`Task.export_spec`) or a
    run's own (the experiment's `export_spec(config)`, named in the run's `run.json`).

    Attributes:
      fn: `(params, inputs: dict[str, array]) -> dict[str, array]`, pure jnp (jit-able).
      inputs: name -> {'shape': [...], 'dtype': str}; 'b' marks the batch dimension, other
        names are symbolic too (e.g. 'p', a prompt length, bounded by a 'constraints' entry).
      meta: sidecar entries: 'task' ('classifier', 'generator', ...), 'preprocessing',
        'class_names' or a tokenizer, 'constraints' (e.g. ["p <= 32"]), anything a client needs.
        A generator adds 'limits' ({'max_prompt_tokens', 'max_new_tokens'}) and 'buckets'
        ({'p': {'sizes': [16, 32], 'length_input': 'prompt_len'}}: `fn` then also takes
        inputs['prompt_len'], the true length of a prompt padded to one of the sizes).
    """

    fn: Callable[[Any, dict], dict]
    inputs: dict[str, dict]
    meta: dict = field(default_factory=dict)


@flax.struct.dataclass
class TrainState:
    """The whole train state as one pytree: what a checkpoint holds.

    Attributes:
      step: int32 scalar, the number of updates applied.
      params: the trained parameters; with named optimizers, a dict with one entry per name
        (e.g. {'generator': ..., 'discriminator': ...}).
      opt_state: the optimizer's state; with named optimizers, {name: state}.
      extra: non-trained state a family keeps across steps, as named collections
        (e.g. {'batch_stats': ...} or {'ema': ...}); {} when there is none.
    """

    step: jax.Array
    params: PyTree
    opt_state: PyTree
    extra: PyTree

    def variables(self) -> dict:
        """`{'params': params, **extra}` (the EMA left out): what `model.apply` takes."""
        return {"params": self.params, **{k: v for k, v in self.extra.items() if k != EMA}}

    def eval_variables(self, ema_decay: float = 0.0) -> dict:
        """`variables()`, with the parameters' moving average as `params` when `ema_decay` > 0:
        `extra['ema']` starts at zeros and is debiased by 1 - decay**step (as `optax.ema`), so a
        warm start or a resume needs no special case."""
        if not ema_decay:
            return self.variables()
        debias = 1.0 - jnp.asarray(ema_decay, jnp.float32) ** jnp.maximum(self.step, 1)
        return dict(self.variables(), params=jax.tree.map(lambda e: (e / debias).astype(e.dtype), self.extra[EMA]))


@dataclass(frozen=True)
class StepTools:
    """lab's helpers for a family's `update`: gradients and optimizer steps, parallel-correct.

    The loop builds them as `StepTools(optimizers, strategy.engine, strategy.gather_for_compute)`:
    how gradients are reduced over devices is the strategy's (`parallel.StepEngine`), never the
    family's.
    """

    optimizers: Optimizers
    # The data-parallel strategy's step functions (`strategy.engine`); the default is jit's over
    # global arrays (one device, or any mesh), where XLA inserts every collective.
    engine: parallel.StepEngine = parallel.GLOBAL_ARRAYS
    # FSDP: parameters stored split over 'fsdp' are gathered whole for the forward and backward
    # pass (`MeshParallel.gather_for_compute`); None when they are stored whole.
    gather: Callable[[PyTree], PyTree] | None = None
    # Gradient accumulation (`config.accumulate_steps`): the batch runs as this many micro-batches
    # in a `lax.scan`, so activations are held for one micro-batch at a time; the update is that
    # of the whole batch.
    accumulate_steps: int = 1

    def mean_grads(self, loss_fn: Callable, params: PyTree, batch: dict, rng: jax.Array, *,
                   with_state: bool = False):
        """Gradient of the global mean of `loss_fn`'s loss sum (see `parallel.global_mean_grads`).

        Returns (grads, sums) or, `with_state`, (grads, sums, new_state) where `loss_fn` returned
        a third value (e.g. updated BatchNorm statistics; averaged over devices under pmap).
        With `accumulate_steps` N > 1 the batch (leading axis B, N dividing it) runs as N
        micro-batches of B / N, each with its own key `fold_in(rng, i)`: the gradient is the
        count-weighted mean of theirs, which is the whole batch's gradient (to float rounding);
        the sums are added; the state is the last micro-batch's.
        """
        n = self.accumulate_steps
        if n == 1:
            return self.engine.mean_grads(loss_fn, params, batch, rng, with_state=with_state, gather=self.gather)
        micro = jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)

        def one(carry, xs):
            grads_sum, sums_sum, _ = carry
            index, micro_batch = xs
            grads, sums, *state = self.engine.mean_grads(loss_fn, params, micro_batch, jax.random.fold_in(rng, index),
                                                         with_state=with_state, gather=self.gather)
            count = self.engine.reduce_metrics({"count": sums["count"]})["count"]  # global, as the mean's
            grads_sum = jax.tree.map(lambda a, g: a + g * count, grads_sum, grads)
            sums_sum = jax.tree.map(jnp.add, sums_sum, sums)
            return (grads_sum, sums_sum, state[0] if state else None), count

        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(lambda: self.engine.mean_grads(loss_fn, params, first, rng, with_state=with_state,
                                                               gather=self.gather))
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        carry = (zeros[0], zeros[1], zeros[2] if with_state else None)
        (grads_sum, sums, state), counts = jax.lax.scan(one, carry, (jnp.arange(n), micro))
        total = jnp.maximum(jnp.sum(counts), 1)
        grads = jax.tree.map(lambda g: (g / total).astype(g.dtype), grads_sum)
        return (grads, sums, state) if with_state else (grads, sums)

    def apply_gradients(self, state: TrainState, grads: PyTree, name: str | None = None) -> TrainState:
        """One optimizer step.

        Args:
          state: the train state.
          grads: with `name`, gradients of `state.params[name]`; otherwise of all `state.params`.
          name: which named optimizer (config `optimizers.<name>`) steps `params[name]`; None for
            the single `optimizer` (or, with named optimizers, every one on its own parameters).
        Returns:
          The state with new params and optimizer state (the step counter is the loop's).
        """
        if name is None and not isinstance(self.optimizers, Mapping):
            updates, opt_state = self.optimizers.update(grads, state.opt_state, state.params)
            return state.replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)
        names = list(self.optimizers) if name is None else [name]
        params, opt_state = dict(state.params), dict(state.opt_state)
        for n in names:
            g = grads[n] if name is None else grads
            updates, opt_state[n] = self.optimizers[n].update(g, opt_state[n], params[n])
            params[n] = optax.apply_updates(params[n], updates)
        return state.replace(params=params, opt_state=opt_state)


class Task:
    """What a model family gives the loop. All methods are pure and jit-able except `summarize`
    and `on_eval` (host side).

    Attributes:
      count_unit: what the sums' `count` counts, for throughput: 'examples' or 'tokens'.
      curves: the metrics `curves.png` plots over steps, one panel each (train and eval splits);
        an entry that is a tuple of names draws them in one panel. Name every headline metric.
    """

    count_unit: str = "examples"
    curves: tuple[str | tuple[str, ...], ...] = ("loss", "accuracy")

    def init(self, rng: jax.Array) -> dict:
        """Fresh variables from `rng`: `{'params': ..., <other collection>: ...}` (flax style)."""
        raise NotImplementedError

    def loss(self, params: PyTree, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
        """Train loss for the default update: (sum of per-example losses, dict of sums incl.
        `count`). No means, no collectives."""
        raise NotImplementedError

    def update(self, state: TrainState, batch: dict, rng: jax.Array,
               tools: StepTools) -> tuple[TrainState, dict]:
        """One training update: `(state, batch, rng) -> (state, metric sums)`.

        The sums are over this device's batch and must include `count` (examples or tokens, for
        `summarize` and the throughput); keys ending in `_norm` are per-step values (grad norms).
        The default: the gradient of the global mean of `loss`, one step of the optimizer(s).
        """
        grads, sums = tools.mean_grads(self.loss, state.params, batch, rng)
        return tools.apply_gradients(state, grads), dict(sums, grad_norm=optax.tree.norm(grads))

    def evaluate(self, variables: dict, batch: dict, rng: jax.Array) -> dict:
        """Eval sums over a batch with `batch['mask']` (1 real, 0 padding); incl. `loss`, `count`.

        `rng` is the same for every batch of every evaluation (derived from the seed), so evals
        that sample (masks, latents) compare across steps.
        """
        raise NotImplementedError

    def summarize(self, sums: dict) -> dict:
        """Host-side: metrics (means, rates, matrices) from summed arrays."""
        raise NotImplementedError

    def export_spec(self, meta: Mapping | None = None) -> ExportSpec:
        """The serving function of a trained model of this task, for `lab.export` (its
        parameters are the program's first argument). `meta`: sidecar entries to add (dataset,
        class names, tokenizer, preprocessing). A family without an export raises."""
        raise NotImplementedError(f"{type(self).__name__} has no export_spec: write one (see ClassificationTask's)")

    def on_eval(self, variables: dict, step: int, workdir: str, rng: jax.Array) -> None:
        """Host-side hook after each evaluation, e.g. writing samples.

        It runs on every process with the same host-local `variables` (numpy in a multi-process
        run), so any jitted sampling is computed by each process on its own devices and no
        process waits for another; write files through `lab.report.save_*`, which write on
        process 0 only."""
