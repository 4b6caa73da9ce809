"""Ray Data operators: a Dataset (id, label, x) in, a Dataset or a small fitted state out."""
