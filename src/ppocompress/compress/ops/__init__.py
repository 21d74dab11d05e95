"""Operations on a model: physical pruning, int8, and the importance scores that choose what to remove."""
