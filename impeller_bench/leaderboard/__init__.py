"""The leaderboard: submissions (packaging and validation), review of pull requests, the board's tables
and plots."""
