"""Configs of the VAE. Select a variant with `--config=experiments/vae/config.py:NAME`.

First train the feature network the sample-quality metrics read (`features_run`):

  python -m experiments.mlp_classifier --workdir=runs/cnn_fashion --config=experiments/mlp_classifier/config.py:cnn_fashion

  (default)  python -m experiments.vae --workdir=runs/vae_fashion
             Convolutional VAE, Bernoulli likelihood, 16 latents, Adam 1e-3, batch 64, 12,000 steps.
             Measured on the 2-core AMD EPYC (Zen 3, AVX2, no AVX-512), alone: 669 s wall; test
             ELBO -238.77 nats/image (reconstruction 223.97 + KL 14.80), FD of its samples 83.6,
             class entropy 2.223.
  mlp        python -m experiments.vae --workdir=runs/vae_fashion_mlp --config=experiments/vae/config.py:mlp
             The same with an MLP encoder and decoder (Dense 512). 164 s wall (the machine shared
             with a test run); test ELBO -243.1 (226.6 + KL 16.5), FD 103.8, class entropy 2.259.
  digits     python -m experiments.vae --workdir=runs/vae_digits --config=experiments/vae/config.py:digits
             38 s wall; test ELBO -23.93 nats/image (20.36 + KL 3.57), FD 22.1, class entropy 2.295.
"""

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The convolutional VAE on Fashion-MNIST, or the named variant of it."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # every random number of the run (init, data order, latent noise) derives from it
    c.dataset = "fashion_mnist"  # fashion_mnist | digits | mnist
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.features_run = "runs/cnn_fashion"  # workdir of the classifier run whose features measure the samples
    c.batch_size = 64
    c.eval_batch_size = 1000  # test ELBO over every test image; one prior sample per test example
    c.num_train_steps = 12000  # 12.8 epochs of 937 batches
    c.log_every_steps = 500
    c.eval_every_steps = 2000
    c.checkpoint_every_steps = 2000
    c.max_checkpoints_to_keep = 2
    c.parallel = "jit"
    c.steps_per_call = 1  # train steps per compiled call (one lax.scan); the same numbers as 1
    c.mesh = ""  # e.g. "data:2,fsdp:2": parameters split along fsdp (lab.parallel.parse_mesh); "": all on data

    c.model = ml_collections.ConfigDict()
    c.model.architecture = "conv"  # conv | mlp
    c.model.latent_dim = 16
    c.model.channels = (32, 64)  # conv: strided 4x4 convolutions down (the decoder mirrors them)
    c.model.hidden = 256  # Dense width between the image part and the latent statistics
    c.model.likelihood = "bernoulli"  # bernoulli (logits) | gaussian (sigmoid mean, learned scale)

    c.optimizer = ml_collections.ConfigDict(dict(name="adam", learning_rate=1e-3))

    c.reference = ml_collections.ConfigDict(dict(
        metric="test_elbo", value=-238.77, source="this config's own published run (BUILD_NOTES.md; nats per image)"))

    if variant in (None, "", "fashion"):
        return c
    if variant == "mlp":
        c.model.architecture = "mlp"
        c.model.hidden = 512
        return c
    if variant == "digits":
        c.dataset = "digits"
        c.features_run = "runs/cnn_digits"
        c.eval_batch_size = 360
        c.num_train_steps = 3000
        c.log_every_steps = 250
        c.eval_every_steps = 500
        c.checkpoint_every_steps = 1000
        c.model.latent_dim = 8
        c.model.hidden = 128
        c.reference.value = -23.93
        return c
    raise ValueError(f"unknown variant {variant!r}: use fashion (the default), mlp or digits")
