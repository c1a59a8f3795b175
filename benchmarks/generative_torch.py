"""The yardstick for the generative steps: lab's GAN and VAE recipes in eager PyTorch.

    python -m benchmarks.generative_torch --recipes=NAME[,NAME...] [--steps=50] [--warmup=3] [--threads=0] [shape flags]

Recipes (written for this benchmark, not taken from any project; shapes and learning rates default
to experiments/gan's and experiments/vae's default configs, and `benchmarks/generative.py` passes
them explicitly). Images NCHW (PyTorch's native layout; lab's are NHWC):
  gan        lab.models.gan's DCGAN. Generator: Linear(Z, 7*7*64) -> (64, 7, 7) -> GroupNorm(1, 64,
             eps 1e-6, flax's) -> ReLU -> ConvTranspose2d(64, 32, 4, stride 2, padding 1) (7 -> 14)
             -> GroupNorm(1, 32) -> ReLU -> ConvTranspose2d(32, 1, 4, 2, 1) (14 -> 28) -> tanh.
             Discriminator: Conv2d(1, 32, 4, 2, 1) -> LeakyReLU(0.2) -> Conv2d(32, 64, 4, 2, 1) ->
             LeakyReLU(0.2) -> flatten -> Linear(7*7*64, 1). One step in lab's order: the
             discriminator's step (fake = G(z) under no_grad; mean of softplus(-D(real)) +
             softplus(D(fake)); backward; Adam), then the generator's through the updated
             discriminator (G(z) computed again; mean softplus(-D(G(z))); backward with D's
             parameters frozen, since lab differentiates with respect to G's only; Adam). Adam 2e-4,
             betas (0.5, 0.999), one per network. Real images in [0, 1] mapped to [-1, 1].
  gan_reuse  the same models and math as PyTorch's own DCGAN example writes the step: one G(z) per
             step, detached for the discriminator's step and reused for the generator's (the same
             value, since G has not moved yet), and D's gradients of the generator's loss computed
             and dropped by the next zero_grad. Less generator work, more discriminator work.
  vae        lab.models.vae's conv VAE, Bernoulli likelihood. Encoder: Conv2d(1, 32, 4, 2, 1) ReLU
             Conv2d(32, 64, 4, 2, 1) ReLU -> flatten -> Linear(3136, 256) ReLU -> Linear(256, 2*16)
             split into mean, logvar; z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) drawn each
             step; decoder: Linear(16, 256) ReLU -> Linear(256, 7*7*64) ReLU -> (64, 7, 7) ->
             ConvTranspose2d(64, 32, 4, 2, 1) ReLU -> ConvTranspose2d(32, 1, 4, 2, 1) -> logits.
             Loss: the batch mean of (binary cross-entropy with logits summed over pixels + KL to
             N(0, I)); Adam 1e-3.
One timed step: everything above (forward, backward, optimizer steps, zero_grad(set_to_none=True))
on one of 4 random batches made beforehand (images uniform in [0, 1], the GAN's z ~ N(0, I)).
Parameters keep PyTorch's default initialisation (lab's is lecun-normal): the step's cost does not
depend on it, and the losses at step 0 are on the same scale (VAE ~ 784 ln 2 = 543 nats per image,
GAN discriminator ~ 2 ln 2).

Needs `torch` (any CPU build); `benchmarks/generative.py --torch_python=...` runs this in a
separate process (so that PyTorch's and XLA's thread pools never share the cores), with PyTorch's
default thread count. Prints one JSON line.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import torch_cli

RECIPES = ("gan", "gan_reuse", "vae")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


class Generator(nn.Module):
    """z_BxZ -> Linear to (channels[0], H/2^n, W/2^n) -> GroupNorm(1) ReLU -> [ConvTranspose(4, 2, 1)
    -> GroupNorm(1) ReLU] per further width -> ConvTranspose(4, 2, 1) to the image's channels -> tanh."""

    def __init__(self, latent: int, channels: tuple[int, ...], image_chw: tuple[int, int, int]):
        super().__init__()
        c, h, w = image_chw
        f = 2 ** len(channels)
        self.start = (channels[0], h // f, w // f)
        self.project = nn.Linear(latent, channels[0] * (h // f) * (w // f))
        layers = [nn.GroupNorm(1, channels[0], eps=1e-6), nn.ReLU()]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1),
                       nn.GroupNorm(1, c_out, eps=1e-6), nn.ReLU()]
        layers += [nn.ConvTranspose2d(channels[-1], c, 4, stride=2, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z_BxZ):
        """z_BxZ -> images_BxCxHxW in [-1, 1]."""
        return self.body(self.project(z_BxZ).view(-1, *self.start))


class Discriminator(nn.Module):
    """images_BxCxHxW -> [Conv(4, 2, 1) -> LeakyReLU(0.2)] per width -> flatten -> Linear(1) logit."""

    def __init__(self, channels: tuple[int, ...], image_chw: tuple[int, int, int]):
        super().__init__()
        c, h, w = image_chw
        layers, c_in = [], c
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c_in = c_out
        f = 2 ** len(channels)
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.logit = nn.Linear(c_in * (h // f) * (w // f), 1)

    def forward(self, x_BxCxHxW):
        """images -> logits_B."""
        return self.logit(self.body(x_BxCxHxW))[:, 0]


class VAE(nn.Module):
    """lab.models.vae.VAE's conv architecture with the Bernoulli likelihood, NCHW."""

    def __init__(self, latent: int, channels: tuple[int, ...], hidden: int,
                 image_chw: tuple[int, int, int]):
        super().__init__()
        c, h, w = image_chw
        f = 2 ** len(channels)
        self.latent = latent
        enc, c_in = [], c
        for c_out in channels:
            enc += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
            c_in = c_out
        flat = channels[-1] * (h // f) * (w // f)
        self.encoder = nn.Sequential(*enc, nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(),
                                     nn.Linear(hidden, 2 * latent))
        widths = list(channels)[::-1]
        dec = [nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, flat), nn.ReLU(),
               nn.Unflatten(1, (widths[0], h // f, w // f))]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            dec += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        dec += [nn.ConvTranspose2d(widths[-1], c, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def forward(self, x_BxCxHxW, eps_BxZ):
        """-> (logits_BxCxHxW, mean_BxZ, logvar_BxZ)."""
        mean, logvar = self.encoder(x_BxCxHxW).split(self.latent, dim=1)
        z = mean + torch.exp(0.5 * logvar) * eps_BxZ
        return self.decoder(z), mean, logvar


def _images(rng, args):
    return torch.from_numpy(rng.random((args.batch, args.channels, args.height, args.width), np.float32))


def gan_runner(args, rng, reuse: bool):
    """(step(i) -> {'d_loss', 'g_loss'} tensors, parameter count) of the GAN recipe."""
    chw = (args.channels, args.height, args.width)
    gen = Generator(args.latent, _ints(args.g_channels), chw)
    disc = Discriminator(_ints(args.d_channels), chw)
    opt_g = torch.optim.Adam(gen.parameters(), lr=args.g_lr, betas=(args.g_b1, args.g_b2))
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.d_lr, betas=(args.d_b1, args.d_b2))
    batches = [(_images(rng, args) * 2.0 - 1.0,  # lab's from_unit: [0, 1] -> [-1, 1]
                torch.from_numpy(rng.standard_normal((args.batch, args.latent)).astype(np.float32)))
               for _ in range(4)]

    def step(i):
        real, z = batches[i % 4]
        if reuse:
            fake = gen(z)
            fake_for_d = fake.detach()
        else:
            with torch.no_grad():
                fake_for_d = gen(z)
        d_loss = (F.softplus(-disc(real)) + F.softplus(disc(fake_for_d))).mean()
        d_loss.backward()
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        if reuse:
            g_loss = F.softplus(-disc(fake)).mean()
            g_loss.backward()  # also fills D's .grad, dropped below as the next D step would
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
        else:
            disc.requires_grad_(False)
            g_loss = F.softplus(-disc(gen(z))).mean()
            g_loss.backward()
            disc.requires_grad_(True)
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)
        return {"d_loss": d_loss, "g_loss": g_loss}

    n = sum(p.numel() for p in gen.parameters()) + sum(p.numel() for p in disc.parameters())
    return step, n


def vae_runner(args, rng):
    """(step(i) -> {'loss', 'recon', 'kl'} tensors, parameter count) of the VAE recipe."""
    model = VAE(args.vae_latent, _ints(args.vae_channels), args.vae_hidden,
                (args.channels, args.height, args.width))
    opt = torch.optim.Adam(model.parameters(), lr=args.vae_lr)
    batches = [_images(rng, args) for _ in range(4)]

    def step(i):
        x = batches[i % 4]
        eps = torch.randn(x.shape[0], args.vae_latent)
        logits, mean, logvar = model(x, eps)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=(1, 2, 3))
        kl = 0.5 * (torch.exp(logvar) + mean.square() - 1.0 - logvar).sum(dim=1)
        loss = (recon + kl).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return {"loss": loss, "recon": recon.mean(), "kl": kl.mean()}

    return step, sum(p.numel() for p in model.parameters())


def measure(recipe: str, args) -> dict:
    """Median (and 10th percentile) time of `args.steps` train steps of `recipe`, after
    `args.warmup` untimed ones; the losses of the first and the last step."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if recipe == "vae":
        step, n_params = vae_runner(args, rng)
    else:
        step, n_params = gan_runner(args, rng, reuse=recipe == "gan_reuse")
    times, first = [], None
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        losses = step(i)
        times.append(time.perf_counter() - t)
        if first is None:
            first = {k: float(v.detach()) for k, v in losses.items()}
    times = times[args.warmup:]
    return {"median_step_ms": float(np.median(times)) * 1e3,
            "p10_step_ms": float(np.percentile(times, 10)) * 1e3,
            "params": n_params, "first_losses": first,
            "final_losses": {k: float(v.detach()) for k, v in losses.items()}}


def main() -> None:
    """Parses the flags, measures each recipe in turn and prints one JSON line."""
    parser = torch_cli.parser(__doc__, RECIPES, warmup=3)
    # Defaults: experiments/gan's and experiments/vae's default (Fashion-MNIST) configs.
    for name, default in (("batch", 64), ("height", 28), ("width", 28), ("channels", 1),
                          ("latent", 64), ("vae_latent", 16), ("vae_hidden", 256)):
        parser.add_argument(f"--{name}", type=int, default=default)
    for name, default in (("g_channels", "64,32"), ("d_channels", "32,64"), ("vae_channels", "32,64")):
        parser.add_argument(f"--{name}", default=default, help="comma-separated widths")
    for name, default in (("g_lr", 2e-4), ("g_b1", 0.5), ("g_b2", 0.999), ("d_lr", 2e-4),
                          ("d_b1", 0.5), ("d_b2", 0.999), ("vae_lr", 1e-3)):
        parser.add_argument(f"--{name}", type=float, default=default)
    torch_cli.run(parser, RECIPES, measure)


if __name__ == "__main__":
    main()
