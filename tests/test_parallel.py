"""Data parallelism on 4 fake CPU devices: jit+NamedSharding, pmap and 1 device agree; sharded
parameters initialise, train and restore with their sharding."""

import json
import os
import subprocess
import sys

import numpy as np

from tests.helpers import final_params, math_records, max_abs_diff, trees_equal
from tests.test_train import small_config

from experiments.mlp_classifier.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Dropout and a warmup + cosine schedule: the features a parallel run could get wrong.
RANDOM_AND_SCHEDULED = dict(**{"model.dropout_rate": 0.2, "optimizer.schedule": "warmup_cosine",
                               "optimizer.warmup_steps": 5})


def _on_four_devices(script: str, *args: str) -> None:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


_MLP_RUNS = """
import sys, jax
assert jax.device_count() == 4, jax.devices()
from experiments.mlp_classifier.__main__ import main
from tests.test_parallel import RANDOM_AND_SCHEDULED
from tests.test_train import small_config
main(small_config(parallel="jit", **RANDOM_AND_SCHEDULED), sys.argv[1] + "/jit_dropout")
for mode in ("jit", "pmap"):
    for k in (1, 4):
        main(small_config(parallel=mode, steps_per_call=k,
                          **{"optimizer.schedule": "warmup_cosine", "optimizer.warmup_steps": 5}),
             sys.argv[1] + "/" + mode + ("" if k == 1 else f"_k{k}"))
"""


def _assert_same_run(workdir, reference, name):
    records, ref_records = math_records(workdir), math_records(reference)
    assert [r["step"] for r in records] == [r["step"] for r in ref_records]
    for r, ref in zip(records, ref_records):
        for key in ("train/loss", "eval_test/loss", "eval_test/accuracy"):
            if key in ref:
                np.testing.assert_allclose(r[key], ref[key], atol=1e-5, err_msg=f"{name} {key}")
    assert max_abs_diff(final_params(workdir), final_params(reference)) < 1e-5, name


def test_jit_pmap_and_one_device_agree(tmp_path):
    """jit on 4 devices draws dropout over the global batch, as 1 device does: same numbers.
    pmap draws train-time randomness per device (see BUILD_NOTES), so it is compared without.
    steps_per_call=4 under each gives its steps_per_call=1 numbers bit for bit."""
    _on_four_devices(_MLP_RUNS, str(tmp_path))
    main(small_config(**RANDOM_AND_SCHEDULED), str(tmp_path / "one_dropout"))
    main(small_config(**{"optimizer.schedule": "warmup_cosine", "optimizer.warmup_steps": 5}),
         str(tmp_path / "one"))
    _assert_same_run(str(tmp_path / "jit_dropout"), str(tmp_path / "one_dropout"), "jit, dropout")
    for name in ("jit", "pmap"):
        _assert_same_run(str(tmp_path / name), str(tmp_path / "one"), name)
        # 4 steps per call (one lax.scan over batches split on the devices): the same numbers.
        assert math_records(str(tmp_path / f"{name}_k4")) == math_records(str(tmp_path / name)), name
        assert trees_equal(final_params(str(tmp_path / f"{name}_k4")), final_params(str(tmp_path / name))), name


_CONTRACT_RUNS = """
import json, sys, jax
from jax.sharding import PartitionSpec as P
assert jax.device_count() == 4, jax.devices()
import lab.data
from lab import checkpoint, parallel, sharding, train
from lab.task import StepTools
from lab import optim
from tests import toys
from tests.test_train import small_config
out = sys.argv[1]

# The mesh: jax.make_mesh's device order, Auto axes (jit propagates what lab does not place).
from jax.sharding import AxisType
mesh = sharding.make_mesh("data:2,fsdp:2")
assert mesh == jax.make_mesh((2, 2), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 2), mesh
assert mesh.axis_types == (AxisType.Auto,) * 2 and dict(mesh.shape) == {"data": 2, "fsdp": 2}
assert list(sharding.make_mesh().devices.flat) == jax.devices()

# A sharded parameter: its shards are built where they live, trained, checkpointed, restored.
config = small_config()
arrays = {s: lab.data.load("digits", s) for s in ("train", "test")}
from lab.tasks.classification import ClassificationTask
task = ClassificationTask(toys.ShardedMLP(features=(128, 64), num_classes=10), {"inputs": arrays["train"]["inputs"][:1]})
strategy = parallel.make_parallel("jit")
init = train.init_state_fn(task, optim.make_optimizers(config, config.num_train_steps))
key = jax.random.key(0)
abstract = jax.eval_shape(init, key)
shardings = strategy.state_shardings(abstract, jax.eval_shape(task.init, key))
state = strategy.init_state(init, key, shardings)
def describe(state):
    kernel = state.params["hidden_0"]["kernel"]
    trace = state.opt_state[0].trace["hidden_0"]["kernel"]
    return {"kernel_spec": str(kernel.sharding.spec), "kernel_shard": list(kernel.addressable_shards[0].data.shape),
            "trace_spec": str(trace.sharding.spec), "other_spec": str(state.params["hidden_1"]["kernel"].sharding.spec)}
report = {"init": describe(state)}
data = lambda c: train.epoch_data(arrays["train"], {"test": arrays["test"]}, c)
half = small_config(num_train_steps=10)
train.train_and_evaluate(half, f"{out}/sharded", task, data(half))
train.train_and_evaluate(config, f"{out}/sharded", task, data(config))
ckpt = checkpoint.Checkpointer(f"{out}/sharded/checkpoints", 10)
target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract, shardings)
restored, _ = ckpt.restore(20, target)
ckpt.close()
report["restored"] = describe(restored)
json.dump(report, open(f"{out}/shardings.json", "w"))

# Masked-LM evaluation under pmap: masks drawn over the global batch, as on 1 device. (A tiny
# learning rate keeps the params at their init, so only the evaluation is compared.)
from experiments.transformer_mlm.__main__ import main as mlm_main
from experiments.transformer_mlm.config import get_config as mlm_config
c = mlm_config("tiny"); c.parallel = "pmap"; c.optimizer.learning_rate = 1e-30
mlm_main(c, f"{out}/mlm_pmap")
"""


def test_sharded_params_and_masked_eval_agree_across_devices(tmp_path):
    """A parameter sharded over 4 devices is built in place, trained, checkpointed and restored
    with its sharding, and trains as the replicated model; masked-LM evaluation under pmap draws
    its masks as 1 device does. (Two optimizers under jit and pmap: test_generative's GAN.)"""
    _on_four_devices(_CONTRACT_RUNS, str(tmp_path))
    shardings = json.loads((tmp_path / "shardings.json").read_text())
    for when in ("init", "restored"):
        assert shardings[when]["kernel_spec"] == "P(None, 'data')", shardings
        assert shardings[when]["kernel_shard"] == [64, 32]  # a quarter of the 64 x 128 kernel per device
        assert shardings[when]["trace_spec"] == "P(None, 'data')"  # momentum split alike
        assert shardings[when]["other_spec"] == "P()"
    main(small_config(), str(tmp_path / "mlp_one"))  # the same model, replicated, 1 device
    assert max_abs_diff(final_params(str(tmp_path / "sharded")), final_params(str(tmp_path / "mlp_one"))) < 1e-5

    from experiments.transformer_mlm.__main__ import main as mlm_main
    from experiments.transformer_mlm.config import get_config as mlm_config
    c = mlm_config("tiny")
    c.optimizer.learning_rate = 1e-30
    mlm_main(c, str(tmp_path / "mlm_one"))
    pmap_val = [r for r in math_records(str(tmp_path / "mlm_pmap")) if "eval_val/loss" in r]
    one_val = [r for r in math_records(str(tmp_path / "mlm_one")) if "eval_val/loss" in r]
    assert pmap_val and len(pmap_val) == len(one_val)
    for r, ref in zip(pmap_val, one_val):
        for key in ("eval_val/loss", "eval_val/accuracy"):
            np.testing.assert_allclose(r[key], ref[key], atol=1e-5, err_msg=key)


def test_the_strategy_owns_the_device_axis():
    """No module of lab but lab/parallel.py names a device axis or writes a collective: the step
    and StepTools call the strategy's engine (pmap's psums and per-device key live there)."""
    import ast
    import glob
    forbidden_calls = {"psum", "pmean", "pmax", "all_gather", "axis_index", "pmap", "shard_map", "ppermute"}
    found = []
    for path in glob.glob(os.path.join(ROOT, "lab", "**", "*.py"), recursive=True):
        if os.path.relpath(path, ROOT) == os.path.join("lab", "parallel.py"):
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            name = None
            if isinstance(node, ast.Attribute) and node.attr in forbidden_calls | {"axis_name"}:
                name = node.attr
            elif isinstance(node, ast.keyword) and node.arg == "axis_name":
                name = "axis_name="
            if name:
                found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {name}")
    assert not found, found


def test_step_tools_take_the_strategy_engine():
    import jax
    import jax.numpy as jnp
    import optax

    from lab import parallel
    from lab.task import StepTools

    sgd = optax.sgd(0.1)
    assert parallel.MeshParallel().engine is parallel.GLOBAL_ARRAYS
    assert StepTools(sgd).engine is parallel.GLOBAL_ARRAYS

    def loss(params, batch, rng):  # sum of squared errors: grads of the mean are exact
        err = batch["x"] * params["w"] - batch["y"]
        return jnp.sum(err ** 2), {"count": jnp.asarray(err.shape[0], jnp.float32)}

    batch = {"x": jnp.arange(4.0), "y": jnp.ones(4)}
    params = {"w": jnp.asarray(0.5)}
    grads, sums = StepTools(sgd).mean_grads(loss, params, batch, jax.random.key(0))
    np.testing.assert_allclose(grads["w"], np.mean(2 * (batch["x"] * 0.5 - 1) * batch["x"]), rtol=1e-6)
    assert float(sums["count"]) == 4 and set(sums) == {"count", "loss"}

    # The pmap engine inside its own axis (here a vmap over 2 slices): the same global gradient,
    # per-slice keys, metrics added over the slices.
    pmap = parallel.PmapParallel().engine
    split = {k: v.reshape(2, 2) for k, v in batch.items()}
    g2, s2 = jax.vmap(lambda b: pmap.mean_grads(loss, params, b, jax.random.key(0)),
                      axis_name=parallel.DATA_AXIS)(split)
    np.testing.assert_allclose(g2["w"], [grads["w"]] * 2, rtol=1e-6)
    keys = jax.vmap(lambda _: jax.random.key_data(pmap.device_rng(jax.random.key(0))),
                    axis_name=parallel.DATA_AXIS)(jnp.arange(2))
    assert not np.array_equal(keys[0], keys[1])
    total = jax.vmap(lambda s: pmap.reduce_metrics(dict(s, grad_norm=s["count"])),
                     axis_name=parallel.DATA_AXIS)(s2)
    np.testing.assert_allclose(total["count"], [4, 4])
    np.testing.assert_allclose(total["grad_norm"], [2, 2])  # per-step norms averaged, not added


def test_declared_placement_wins_over_the_size_default_and_moments_follow():
    """A parameter boxed with its placement (`nn.with_logical_partitioning`, or mesh axes with
    `nn.with_partitioning`) is placed so, and its optimizer moments (also a named optimizer's,
    which sees one top-level entry) follow it; an undeclared leaf takes `fsdp_spec` (large: split,
    small: replicated); a moment of another shape than its parameter's takes the default too.
    Checked on an abstract mesh (no devices needed)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax
    import pytest
    from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

    from lab import sharding
    from lab.errors import ConfigValueError

    class Net(nn.Module):
        logical: tuple = ("mlp", "embed")

        @nn.compact
        def __call__(self, x):
            lecun, zeros = nn.initializers.lecun_normal(), nn.initializers.zeros
            x = nn.Dense(64, kernel_init=nn.with_logical_partitioning(lecun, self.logical), name="declared")(x)
            x = nn.Dense(128, name="big")(x)  # 64 x 128: the size default splits its 128
            return nn.Dense(8, bias_init=nn.with_partitioning(zeros, (None,)), name="small")(x)

    def shardings(state, boxed, shape=(2, 4)):
        mesh = AbstractMesh(shape, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 2)
        specs = sharding.shardings_from_declarations(state, mesh, boxed)
        return jax.tree.map(lambda s: s.spec, specs)

    boxed = jax.eval_shape(Net().init, jax.random.key(0), jnp.zeros((1, 128)))
    params = nn.unbox(boxed)["params"]
    state = {"params": params, "opt_state": optax.adam(1e-3).init(params),
             "named": {"declared": optax.sgd(0.1, momentum=0.9).init(params["declared"])},
             "factored": {"declared": {"kernel": jax.ShapeDtypeStruct((128,), jnp.float32)}}}
    specs = shardings(state, boxed)
    declared, default = P(None, "fsdp"), P("fsdp", None)  # the default splits the 128 of 128 x 64
    assert specs["params"]["declared"]["kernel"] == declared
    assert specs["opt_state"][0].mu["declared"]["kernel"] == specs["opt_state"][0].nu["declared"]["kernel"] == declared
    assert specs["named"]["declared"][0].trace["kernel"] == declared
    assert specs["factored"]["declared"]["kernel"] == P()  # (128,): not the parameter's shape; small
    assert specs["params"]["big"]["kernel"] == specs["opt_state"][0].mu["big"]["kernel"] == P(None, "fsdp")
    assert specs["params"]["small"]["kernel"] == specs["params"]["small"]["bias"] == P()
    assert shardings(state, None)["params"]["declared"]["kernel"] == default  # nothing declared
    assert shardings(state, boxed, (8, 1))["params"]["declared"]["kernel"] == declared  # fsdp 1: whole
    with pytest.raises(ConfigValueError, match="does not divide"):
        shardings(state, boxed, (1, 3))
    unknown = jax.eval_shape(Net(logical=("mlp", "embed")).init, jax.random.key(0), jnp.zeros((1, 128)))
    unknown["params"]["declared"]["kernel"] = nn.Partitioned(unknown["params"]["declared"]["kernel"].value,
                                                             (None, "model"))
    with pytest.raises(ValueError, match="does not have"):
        shardings(state, unknown)
