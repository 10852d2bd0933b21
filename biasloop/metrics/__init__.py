"""Numbers: shares and amplification (with bootstrap intervals), downstream retrieval and fairness
metrics, the paradox table and one generation's evaluation."""
