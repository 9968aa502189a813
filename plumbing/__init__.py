"""Run plumbing a reader of the method can skip: the options and presets (config), the run folder
(rundir), several processes (dist), search.json (history), the plots of a run (plots), which run a
file belongs to (identity), files read back (schema), and the memory estimate (memory)."""
