"""python -m experiments: the experiments, one line each, the package's other commands, and how
to get an experiment's help (`experiments.catalog.listing`, read from the experiments' own files)."""

from experiments import catalog

if __name__ == "__main__":
    print(catalog.listing())
