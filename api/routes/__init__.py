"""HTTP routes: authorise, call one service function, map the result to a response schema."""
