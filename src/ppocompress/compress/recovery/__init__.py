"""Recovery after pruning: least squares, then optionally distillation."""
