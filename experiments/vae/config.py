"""Configs of the VAE. Select a variant with `--config=experiments/vae/config.py:NAME`.

What they are for: a VAE on one-channel images, scored by its test ELBO (nats per image, with
its reconstruction and KL parts) and by FD and class coverage of its samples through a feature
network, the classifier run named by `features_run`. Train that one first, beside this run's
workdir (a run named in a config file is looked for in the folder that holds the workdir; one
given as --config.features_run=PATH is relative to the current folder):

  python -m experiments.mlp_classifier --workdir=runs/cnn_fashion --config=experiments/mlp_classifier/config.py:cnn_fashion

The measured numbers live in experiments/reference_results.json (README's results table is
generated from it); each variant names its row, and the closing summary quotes that row.

  (default)  python -m experiments.vae --workdir=runs/vae_fashion
             Convolutional VAE, Bernoulli likelihood, 16 latents, Adam 1e-3, batch 64, 12,000 steps.
             Row: vae_fashion.
  mlp        python -m experiments.vae --workdir=runs/vae_fashion_mlp --config=experiments/vae/config.py:mlp
             The same with an MLP encoder and decoder (Dense 512): what the convolutions are
             worth. No row of its own; its summary quotes the convolutional row, vae_fashion.
  digits     python -m experiments.vae --workdir=runs/vae_digits --config=experiments/vae/config.py:digits
             The 8x8 digits, 8 latents, 3,000 steps: the quick check of the generative family.
             Its features_run is cnn_digits beside the workdir (runs/cnn_digits here). Row: vae_digits.
"""

import ml_collections

from experiments import REFERENCE_TABLE
from lab import configs, reference_table


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The convolutional VAE on Fashion-MNIST, or the named variant of it."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # every random number of the run (init, data order, latent noise) derives from it
    c.dataset = "fashion_mnist"  # fashion_mnist | digits | mnist
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.features_run = "cnn_fashion"  # the classifier run whose features measure the samples; here: beside the workdir
    c.batch_size = 64
    c.eval_batch_size = 1000  # test ELBO over every test image; one prior sample per test example
    c.num_train_steps = 12000  # 12.8 epochs of 937 batches
    c.log_every_steps = 500
    c.eval_every_steps = 2000
    c.checkpoint_every_steps = 2000
    c.max_checkpoints_to_keep = 2
    configs.add_loop_options(c)  # parallel, mesh, steps_per_call, ... (README: the loop's training keys)

    c.model = ml_collections.ConfigDict()
    c.model.architecture = "conv"  # conv | mlp
    c.model.latent_dim = 16
    c.model.channels = (32, 64)  # conv: strided 4x4 convolutions down (the decoder mirrors them)
    c.model.hidden = 256  # Dense width between the image part and the latent statistics
    c.model.likelihood = "bernoulli"  # bernoulli (logits) | gaussian (sigmoid mean, learned scale)

    c.optimizer = ml_collections.ConfigDict(dict(name="adam", learning_rate=1e-3))

    # Shown beside the result in the closing summary (ELBO in nats per image); no effect on the run.
    c.reference = reference_table.table_reference(REFERENCE_TABLE, "vae_fashion", "test_elbo")

    if variant in (None, "", "fashion"):
        return c
    if variant == "mlp":
        c.model.architecture = "mlp"
        c.model.hidden = 512
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "vae_fashion", "test_elbo", label="the convolutional VAE")
        return c
    if variant == "digits":
        c.dataset = "digits"
        c.features_run = "cnn_digits"
        c.eval_batch_size = 360
        c.num_train_steps = 3000
        c.log_every_steps = 250
        c.eval_every_steps = 500
        c.checkpoint_every_steps = 1000
        c.model.latent_dim = 8
        c.model.hidden = 128
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "vae_digits", "test_elbo")
        return c
    raise ValueError(f"unknown variant {variant!r}: use fashion (the default), mlp or digits")
