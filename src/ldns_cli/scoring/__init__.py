"""Sample quality: the spike-train metrics (`metrics`), the evaluation protocol with its floor and
naive reference points (`evaluation`), and the table and figure report (`report`).

Imports core only.
"""
