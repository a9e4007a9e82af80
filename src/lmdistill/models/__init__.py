"""Model-side helpers: one Features view of any output; teachers; students."""
