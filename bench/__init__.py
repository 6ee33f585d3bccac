"""`make bench`: the course's speed and cost, printed as a table and saved to bench/results.json."""
