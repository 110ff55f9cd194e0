"""Phase 1, NIWT: perturb each layer, measure which capability it costs, plan the student."""
