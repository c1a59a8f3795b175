"""GAN and VAE train-step speed: lab's step for the generative recipes, against PyTorch.

    python -m benchmarks.generative [--steps=N] [--rounds=3] [--configs=gan,vae]
                                    [--torch_python=PYTHON] [--torch_threads=0] [--out=FILE]

Configs (each lab's own step, `lab.train.build_train_step`, on random data of the recipe's shapes:
images uniform in [0, 1], latents N(0, I); the tasks are built without the feature network, which
only the evals use, so the train step is the one a run takes):
  gan  experiments/gan's default config (Fashion-MNIST, 28x28x1): `GANTask` of lab.models.gan's
       Generator (latent 64, widths 64 at 7x7 and 32 at 14x14, GroupNorm(1 group), ConvTranspose
       4x4 stride 2) and Discriminator (Conv 4x4 stride 2 to 32 then 64, LeakyReLU(0.2), Dense(1)),
       batch 64 real images and 64 latents; one step = the discriminator's gradient and Adam step,
       then the generator's non-saturating gradient through the updated discriminator and its Adam
       step (two named optimizers, Adam 2e-4, b1 0.5).
  vae  experiments/vae's default config: `VAETask` of lab.models.vae's conv VAE (Conv 4x4 stride 2
       to 32, 64, Dense 256, 16 latents, the mirror image back, Bernoulli logits), batch 64, the
       negative one-sample ELBO (its noise drawn in the step), Adam 1e-3.
For each: compile time, median step time (each step waited for), the mean time of steps run in a
row (how lab's loop runs them), examples/s (images per step: 64), and model FLOP/s as a fraction
of this machine's jit'd float32 matmul peak (`transformer_lm.matmul_peak`).

Model FLOPs per step, counted from the configs' shapes: a dense layer 2 * B * in * out; a conv
2 * B * H_out * W_out * C_out * C_in * k^2 (the whole kernel at every output position, border taps
on the padding included); a transposed conv as the conv it transposes, 2 * B * H_in * W_in * C_in
* C_out * k^2 (each input pixel scattered through the whole kernel: the useful MACs, none on the
inserted zeros); norms, activations, losses and the optimizer not counted. A network pass with a
backward counts 3 x its forward, one without 1 x. GAN: the discriminator's step runs G forward
(no gradient) and D on the real and the generated batch with a backward (1 G + 2 x 3 D), the
generator's step G and D forward and back through both (3 G + 3 D): 4 G + 9 D forwards of a batch
in all. (XLA skips D's parameter gradients in the generator's step and the input gradient of D's
first layer, so this counts a little more than the step needs.) VAE: 3 x (encoder + decoder).

The yardstick runs side by side: `benchmarks/generative_torch.py` (the same models, losses and
optimizers in eager PyTorch, NCHW, PyTorch's default threads unless `--torch_threads`) under
`--torch_python` (a Python with torch; default: this one, skipped if it has no torch), in its own
process without lab's malloc settings. Pairings: gan against `gan` (lab's order and work: G run
twice, D's parameters frozen in the generator's backward) and `gan_reuse` (the step as PyTorch's
DCGAN example writes it: one G forward reused by both steps, D's gradients of the generator's loss
computed and discarded); vae against `vae`. Measurements alternate, lab then PyTorch, for
`--rounds` rounds; each side reports the median of its round medians. Both sides' losses at their
first step go to the JSON (`lab_initial_losses`, and `first_losses` per yardstick) as a check
that they compute the same thing. Prints a table and writes JSON (default
`benchmarks/runs/<date>_<time>/generative.json`; `--out=benchmarks/results/generative.json`
updates the committed one).
"""

from __future__ import annotations

import os

import jax
import numpy as np

from benchmarks import common
from benchmarks.transformer_lm import matmul_peak
from experiments.cli import ensure_malloc_env
from experiments.gan.config import get_config as gan_config
from experiments.vae.config import get_config as vae_config
from lab.models import gan, vae
from lab.tasks import generative

# config -> (torch recipes, the first the headline pairing; default timed steps per round; torch
# warm-up steps).
GROUPS = {
    "gan": (("gan", "gan_reuse"), 20, 3),
    "vae": (("vae",), 20, 3),
}
KERNEL = 4  # lab's generative models: 4x4 kernels, stride 2, each halving or doubling the size


def conv_flops(batch: int, out_hw: int, c_in: int, c_out: int) -> float:
    """Forward FLOPs of a 4x4 conv with `out_hw` output positions (a transposed conv: pass its
    input positions, the conv it transposes)."""
    return 2.0 * batch * out_hw * c_in * c_out * KERNEL * KERNEL


def down_flops(batch: int, image_shape, channels) -> float:
    """Forward FLOPs of the strided convs from the image to `channels[-1]` at 1/2^n the size
    (the discriminator's and the VAE encoder's); the generator's and the VAE decoder's mirror
    image (transposed convs from `channels[-1]` up to the image) counts the same."""
    h, w, c = image_shape
    total, c_in = 0.0, c
    for i, c_out in enumerate(channels, start=1):
        total += conv_flops(batch, (h // 2 ** i) * (w // 2 ** i), c_in, c_out)
        c_in = c_out
    return total


def _image_shape(config) -> tuple[int, int, int]:
    size = generative.IMAGE_SIZES[config.dataset]
    return (size, size, 1)


def _gan_setup():
    """(config, task, 4 random batches, model FLOPs per step, info, torch flags) of experiments/gan's
    default config."""
    config = gan_config()
    m = config.model
    shape = _image_shape(config)
    g_ch, d_ch, z = tuple(m.generator_channels), tuple(m.discriminator_channels), m.latent_dim
    task = generative.GANTask(gan.Generator(image_shape=shape, channels=g_ch),
                              gan.Discriminator(channels=d_ch), z, shape, features=None,
                              grid_noise=np.zeros((generative.GRID_SIZE, z), np.float32))
    b, (h, w, c) = config.batch_size, shape
    rng = np.random.default_rng(0)
    batches = [{"inputs": rng.random((b, h, w, c), np.float32),
                "noise": rng.standard_normal((b, z)).astype(np.float32)} for _ in range(4)]
    start = (h // 2 ** len(g_ch)) * (w // 2 ** len(g_ch))
    g_forward = (2.0 * b * z * start * g_ch[0]  # project
                 + down_flops(b, shape, g_ch[::-1]))  # the transposed convs up to the image
    d_flat = (h // 2 ** len(d_ch)) * (w // 2 ** len(d_ch)) * d_ch[-1]
    d_forward = down_flops(b, shape, d_ch) + 2.0 * b * d_flat  # the convs, the logit
    flops = 4 * g_forward + 9 * d_forward
    g, d = config.optimizers.generator, config.optimizers.discriminator
    flags = {"batch": b, "height": h, "width": w, "channels": c, "latent": z,
             "g_channels": ",".join(map(str, g_ch)), "d_channels": ",".join(map(str, d_ch)),
             "g_lr": g.learning_rate, "g_b1": g.b1, "g_b2": g.b2,
             "d_lr": d.learning_rate, "d_b1": d.b1, "d_b2": d.b2}
    info = {"image_shape": list(shape), "latent_dim": z, "generator_channels": list(g_ch),
            "discriminator_channels": list(d_ch), "batch": b, "unit": "examples", "units_per_step": b,
            "forward_gflop": {"generator": g_forward / 1e9, "discriminator": d_forward / 1e9}}
    return config, task, batches, flops, info, flags


def _vae_setup():
    """(config, task, 4 random batches, model FLOPs per step, info, torch flags) of experiments/vae's
    default config."""
    config = vae_config()
    m = config.model
    if m.architecture != "conv" or m.likelihood != "bernoulli":
        raise ValueError("the yardstick has the conv, bernoulli VAE only")
    shape = _image_shape(config)
    ch, z, hidden = tuple(m.channels), m.latent_dim, m.hidden
    model = vae.VAE(image_shape=shape, latent_dim=z, architecture=m.architecture, channels=ch,
                    hidden=hidden, likelihood=m.likelihood)
    task = generative.VAETask(model, None, grid_noise=np.zeros((generative.GRID_SIZE, z), np.float32),
                              shown_images=np.zeros((16, *shape), np.float32))
    b, (h, w, c) = config.batch_size, shape
    rng = np.random.default_rng(0)
    batches = [{"inputs": rng.random((b, h, w, c), np.float32)} for _ in range(4)]
    flat = (h // 2 ** len(ch)) * (w // 2 ** len(ch)) * ch[-1]
    encoder = down_flops(b, shape, ch) + 2.0 * b * flat * hidden + 2.0 * b * hidden * 2 * z
    decoder = (2.0 * b * z * hidden + 2.0 * b * hidden * flat
               + down_flops(b, shape, ch))  # the transposed convs mirror the encoder's
    flops = 3 * (encoder + decoder)
    flags = {"batch": b, "height": h, "width": w, "channels": c, "vae_latent": z,
             "vae_hidden": hidden, "vae_channels": ",".join(map(str, ch)),
             "vae_lr": config.optimizer.learning_rate}
    info = {"image_shape": list(shape), "latent_dim": z, "channels": list(ch), "hidden": hidden,
            "likelihood": m.likelihood, "batch": b, "unit": "examples", "units_per_step": b,
            "forward_gflop": {"encoder": encoder / 1e9, "decoder": decoder / 1e9}}
    return config, task, batches, flops, info, flags


def initial_losses(name: str, task, batch: dict) -> dict:
    """lab's per-example losses at its initial parameters on `batch` (the GAN's g_loss against the
    initial discriminator), for a check against the yardstick's first step."""
    key = jax.random.key(0)
    params = task.init(key)["params"]
    if name == "vae":
        total, sums = task.loss(params, batch, key)
        n = float(sums["count"])
        return {"loss": float(total) / n, "recon": float(sums["recon"]) / n, "kl": float(sums["kl"]) / n}
    n = batch["inputs"].shape[0]
    d_total, _ = task.d_loss(params["generator"])(params["discriminator"], batch, key)
    g_total, _ = task.g_loss(params["discriminator"])(params["generator"], batch, key)
    return {"d_loss": float(d_total) / n, "g_loss": float(g_total) / n}


def lab_step(name: str):
    """Compiles lab's train step for config `name`; -> (info dict, run, torch flags)."""
    config, task, batches, flops, info, flags = _gan_setup() if name == "gan" else _vae_setup()
    run, compile_s, n_params = common.compiled_train_step(task, config, batches)
    info = dict(info, config=name, params=int(n_params), compile_s=compile_s,
                model_gflop_per_step=flops / 1e9,
                lab_initial_losses=initial_losses(name, task, batches[0]))
    return info, run, flags


def bench_config(name: str, steps: int | None, rounds: int, torch_python: str | None,
                 torch_threads: int = 0) -> dict:
    """Measures lab's step of config `name` against its torch recipes (`common.alternate_with_torch`)."""
    recipes, default_steps, warmup = GROUPS[name]
    info, run, flags = lab_step(name)
    return common.alternate_with_torch({name: (info, run)}, {name: recipes}, "benchmarks.generative_torch",
                                       flags, steps or default_steps, warmup, rounds, torch_python,
                                       torch_threads)[0]


def main() -> None:
    """Parses the flags, measures each config, prints the table and saves the JSON."""
    ensure_malloc_env()  # measure the process the experiments run in
    args, names, torch_python, torch_version = common.against_torch_flags(
        __doc__, tuple(GROUPS), f"default: {GROUPS['gan'][1]}", "generative.json")
    load_before = os.getloadavg()
    peak = matmul_peak()
    rows = [bench_config(n, args.steps, args.rounds, torch_python, args.torch_threads) for n in names]
    common.report_against_torch(rows, peak, load_before, torch_version, args.out, width=5)


if __name__ == "__main__":
    main()
