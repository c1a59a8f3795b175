"""Every run records what makes it reproducible (`lab.provenance`, `WORKDIR/environment.json`)."""

import json
import subprocess

import jax

import lab.data
from lab import provenance
from experiments.mlp_classifier.__main__ import main
from tests.test_train import small_config

ROOT = provenance._REPO


def test_a_run_records_its_environment_once_per_start(tmp_path):
    main(small_config(num_train_steps=10), str(tmp_path))
    main(small_config(num_train_steps=20), str(tmp_path))  # resumes at 10
    starts = json.loads((tmp_path / "environment.json").read_text())["starts"]
    assert [s["step"] for s in starts] == [0, 10]
    entry = starts[-1]
    assert set(entry) == {"step", "time_utc", "git", "versions", "devices", "cpu", "xla_flags", "prng_impl", "seed",
                          "dataset"}
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert entry["git"]["revision"] == head and isinstance(entry["git"]["dirty"], bool)
    assert set(entry["versions"]) == {"python", *provenance.PACKAGES}
    assert entry["versions"]["jax"] == jax.__version__ and all(entry["versions"].values())
    assert entry["devices"] == {"platform": "cpu", "kind": jax.devices()[0].device_kind, "count": 1,
                                "process_count": 1}
    assert entry["cpu"]["model_name"] and "avx512f" in entry["cpu"]
    assert entry["prng_impl"] == str(jax.config.jax_default_prng_impl) and entry["seed"] == 0
    assert entry["dataset"] == {"name": "digits", "sha256": lab.data.checksum("digits")}
    assert {k: v for k, v in starts[0].items() if k not in ("step", "time_utc")} == \
        {k: v for k, v in entry.items() if k not in ("step", "time_utc")}  # the same machine and tree


def test_the_dataset_checksum_is_of_its_content(tmp_path):
    """The same dataset built in another data dir (other file bytes) has the same checksum, read
    back from its cache the second time; another dataset has another."""
    fresh = lab.data.checksum("digits", data_dir=str(tmp_path))
    assert fresh == lab.data.checksum("digits") == lab.data.checksum("digits", data_dir=str(tmp_path))
    assert (tmp_path / "digits" / "1.0.0" / "lab-checksum.json").is_file()
    assert lab.data.checksum("shakespeare_char") != fresh and len(fresh) == 64
