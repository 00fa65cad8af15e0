"""Evidence: console logs in, runs out (the one parser and its scanner)."""
