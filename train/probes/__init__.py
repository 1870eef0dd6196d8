"""Research probes of the shapes world's parts (`python -m train.probes decoder|binding`): measurements that
explain the recipe's choices, not part of it."""
