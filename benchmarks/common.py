"""What every benchmark records beside its numbers, and how it saves them."""

import json
import os
import platform

import jax


def machine() -> dict:
    """The machine and stack a result was measured on."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__,
            "devices": str(jax.devices())}


def save(result: dict, path: str) -> None:
    """Writes `result` as indented JSON to `path` (folders created) and says where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print("wrote", path)


def compiled_train_step(task, config, batches: list[dict]):
    """Compiles lab's own train step (`lab.train.build_train_step`: the task's update, the
    optimizer of `config`, metrics) on one device under jit, for a benchmark.

    Args:
      task: a `lab.task.Task`.
      config: reads the optimizer keys and `num_train_steps` (the schedule's horizon).
      batches: a few batches of the step's shapes, cycled through by `run`.
    Returns:
      (run, compile seconds, number of parameters), where `run(steps)` -> (times of `steps`
      steps each waited for, mean time of `steps` steps in a row). The second is how lab's loop
      runs (it syncs only at log points, so it dispatches a step while the previous one
      computes); the first adds the dispatch to each step.
    """
    import time

    from lab import optim, parallel, train
    from lab.task import StepTools

    tools = StepTools(optim.make_optimizers(config, config.num_train_steps), axis_name=None)
    strategy = parallel.make_parallel("jit")
    key = jax.random.key(0)
    init_state = train.init_state_fn(task, tools.optimizers)
    shardings = strategy.state_shardings(jax.eval_shape(init_state, key), task.partition_rules)
    state = strategy.init_state(init_state, key, shardings)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    step, layout = train.build_train_step(task, tools, key, strategy, shardings, state, batches[0])
    acc = strategy.put_acc(layout.zeros())
    t = time.perf_counter()
    compiled = step.lower(state, acc, batches[0]).compile()
    compile_s = time.perf_counter() - t
    carry = list(compiled(state, acc, batches[0]))
    carry[1].block_until_ready()

    def run(steps: int) -> tuple[list[float], float]:
        times = []
        for i in range(steps):
            t = time.perf_counter()
            carry[:] = compiled(carry[0], carry[1], batches[i % len(batches)])
            carry[1].block_until_ready()
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(steps):
            carry[:] = compiled(carry[0], carry[1], batches[i % len(batches)])
        carry[1].block_until_ready()
        return times, (time.perf_counter() - t) / steps

    return run, compile_s, int(n_params)
