"""What a person reads: figures, the run summary for `dvc exp show`, and the offline HTML report."""
