"""What the routes call: one function per action, taking a session and the authenticated user."""
