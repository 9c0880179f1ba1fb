"""The pieces of ``python -m momentum bench``: timing, machine facts, peers, report."""
