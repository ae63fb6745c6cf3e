"""Classification: a classifier forgets part of its training set (class-wise, random, mislabeled, a deletion list)."""
