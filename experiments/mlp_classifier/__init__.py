"""MLP digit classifier: the seed recipe 784 -> 128 -> 64 -> 10, SGD(0.001, momentum 0.9)."""
