"""Configs of the MLP classifier. Select a variant with `--config=experiments/mlp_classifier/config.py:NAME`.

What they are for: the seed recipe of an MLP image classifier, tuned recipes that show how far the
same model goes, and the CNNs whose features score the generative family's samples. The
measured numbers live in experiments/reference_results.json (README's results table is generated
from it); each variant names its row, and the closing summary quotes that row.

  (default)      python -m experiments.mlp_classifier --workdir=runs/mlp_digits
                 The seed recipe on scikit-learn digits: 64 -> 128 -> 64 -> 10 (the input layer
                 takes the dataset's flattened size), SGD lr 0.001 momentum 0.9, batch 100,
                 10 epochs = 140 steps: too few steps at this rate, it has barely started. No row
                 of its own; its summary quotes the tuned recipe's row, mlp_digits_tuned.
  fashion        python -m experiments.mlp_classifier --workdir=runs/mlp_fashion --config=experiments/mlp_classifier/config.py:fashion
                 The exact seed recipe on Fashion-MNIST (784 inputs), 6,000 steps; the row also
                 holds the seed's own PyTorch listing's accuracy. Row: mlp_fashion.
  digits_tuned   python -m experiments.mlp_classifier --workdir=runs/mlp_digits_tuned --config=experiments/mlp_classifier/config.py:digits_tuned
                 Adam 3e-3, warmup + cosine, 256-128 hidden, 1,400 steps: the tuned digits
                 classifier (README's main job). Row: mlp_digits_tuned.
  fashion_tuned  python -m experiments.mlp_classifier --workdir=runs/mlp_fashion_tuned --config=experiments/mlp_classifier/config.py:fashion_tuned
                 AdamW 1e-3 wd 1e-4, warmup + cosine, 512-256 hidden, dropout 0.2, 18,000 steps:
                 the tuned Fashion-MNIST MLP. Row: mlp_fashion_tuned.
  mnist1d        python -m experiments.mlp_classifier --workdir=runs/mlp_mnist1d --config=experiments/mlp_classifier/config.py:mnist1d
                 The seed recipe on MNIST-1D, 4,000 steps; the row also holds the MNIST-1D
                 paper's baselines. Row: mlp_mnist1d.
  cnn_fashion    python -m experiments.mlp_classifier --workdir=runs/cnn_fashion --config=experiments/mlp_classifier/config.py:cnn_fashion
                 The CNN (lab.models.cnn) whose features score experiments.gan and experiments.vae
                 on Fashion-MNIST: 3x3 conv 32, 64 (each + 2x2 max pool) -> Dense 128 -> 10, Adam
                 1e-3 warmup + cosine, batch 128, 5 epochs. Row: cnn_fashion.
  cnn_digits     python -m experiments.mlp_classifier --workdir=runs/cnn_digits --config=experiments/mlp_classifier/config.py:cnn_digits
                 CNN 16, 32 -> 64 on digits, 700 steps: the digits feature network. Row: cnn_digits.
"""

import ml_collections

from experiments import REFERENCE_TABLE
from lab import configs, reference_table


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    """The seed recipe on digits, or the named variant of it."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # every random number of the run (init, data order, dropout) derives from it
    c.dataset = "digits"  # digits | fashion_mnist | mnist1d | mnist (see lab.data)
    c.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: $LAB_DATA_DIR or ~/tensorflow_datasets
    # 'memory': each split read whole into numpy; 'stream': rows read from the array_record files as
    # batches need them (lab.data.stream), for data larger than memory. Same batches either way.
    c.data_source = "memory"
    c.batch_size = 100  # global batch, split over all devices
    c.eval_batch_size = 500  # the last eval batch is padded and masked: every test example counts once
    c.num_train_steps = 140  # 10 epochs of 14 batches (1,437 train images // 100)
    c.log_every_steps = 14  # once an epoch
    c.eval_every_steps = 14
    c.checkpoint_every_steps = 70
    c.max_checkpoints_to_keep = 3
    configs.add_loop_options(c)  # parallel, mesh, steps_per_call, ... (README: the loop's training keys)

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"  # mlp | cnn (lab.models.cnn: conv blocks, then the hidden Dense layers)
    c.model.features = (128, 64)  # hidden Dense widths; the last is the feature layer (cnn runs as features_run)
    c.model.dropout_rate = 0.0
    c.model.channels = (32, 64)  # cnn only: conv widths, each block 3x3 conv -> relu -> 2x2 max pool
    c.model.kernel_size = 3  # cnn only

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"  # sgd | adam | adamw | adagrad
    c.optimizer.learning_rate = 0.001
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False
    c.optimizer.schedule = "constant"  # constant | warmup_cosine
    c.optimizer.warmup_steps = 0
    c.optimizer.end_learning_rate = 0.0
    c.optimizer.decay_steps = ml_collections.FieldReference(None, field_type=int)  # cosine horizon; None: num_train_steps
    c.optimizer.weight_decay = 0.0  # adamw only
    c.optimizer.grad_clip_norm = 0.0  # 0 = no clipping

    # Shown beside the result in the closing summary; no effect on the run.
    c.reference = reference_table.table_reference(REFERENCE_TABLE, "mlp_digits_tuned", "test_accuracy",
                                         label="the tuned recipe on the same data (digits_tuned)")

    if variant in (None, "", "digits"):
        return c
    if variant == "fashion":
        c.dataset = "fashion_mnist"
        c.num_train_steps = 6000  # 10 epochs of 600 batches
        c.log_every_steps = 600
        c.eval_every_steps = 600
        c.checkpoint_every_steps = 3000
        c.eval_batch_size = 1000
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "mlp_fashion", "test_accuracy")
        return c
    if variant == "digits_tuned":
        c.num_train_steps = 1400  # 100 epochs
        c.log_every_steps = 140
        c.eval_every_steps = 140
        c.checkpoint_every_steps = 700
        c.optimizer.name = "adam"
        c.optimizer.learning_rate = 3e-3
        c.optimizer.schedule = "warmup_cosine"
        c.optimizer.warmup_steps = 50
        c.model.features = (256, 128)
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "mlp_digits_tuned", "test_accuracy")
        return c
    if variant == "fashion_tuned":
        c.dataset = "fashion_mnist"
        c.num_train_steps = 18000  # 30 epochs
        c.log_every_steps = 600
        c.eval_every_steps = 3000
        c.checkpoint_every_steps = 3000
        c.eval_batch_size = 1000
        c.model.features = (512, 256)
        c.model.dropout_rate = 0.2
        c.optimizer.name = "adamw"
        c.optimizer.learning_rate = 1e-3
        c.optimizer.weight_decay = 1e-4
        c.optimizer.schedule = "warmup_cosine"
        c.optimizer.warmup_steps = 600
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "mlp_fashion_tuned", "test_accuracy")
        return c
    if variant == "mnist1d":
        c.dataset = "mnist1d"
        c.num_train_steps = 4000  # 100 epochs of 40 batches
        c.log_every_steps = 400
        c.eval_every_steps = 400
        c.checkpoint_every_steps = 2000
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "mlp_mnist1d", "test_accuracy")
        return c
    if variant == "cnn_fashion":
        c.dataset = "fashion_mnist"
        c.batch_size = 128
        c.num_train_steps = 2340  # 5 epochs of 468 batches
        c.log_every_steps = 468
        c.eval_every_steps = 1170
        c.checkpoint_every_steps = 1170
        c.eval_batch_size = 1000
        c.model.name = "cnn"
        c.model.features = (128,)
        c.optimizer.name = "adam"
        c.optimizer.learning_rate = 1e-3
        c.optimizer.schedule = "warmup_cosine"
        c.optimizer.warmup_steps = 200
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "cnn_fashion", "test_accuracy")
        return c
    if variant == "cnn_digits":
        c.num_train_steps = 700  # 50 epochs
        c.log_every_steps = 140
        c.eval_every_steps = 350
        c.checkpoint_every_steps = 350
        c.model.name = "cnn"
        c.model.channels = (16, 32)
        c.model.features = (64,)
        c.optimizer.name = "adam"
        c.optimizer.learning_rate = 3e-3
        c.optimizer.schedule = "warmup_cosine"
        c.optimizer.warmup_steps = 50
        c.reference = reference_table.table_reference(REFERENCE_TABLE, "cnn_digits", "test_accuracy")
        return c
    raise ValueError(f"unknown variant {variant!r}: use digits, fashion, digits_tuned, fashion_tuned, mnist1d, "
                     f"cnn_fashion or cnn_digits")
