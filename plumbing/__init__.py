"""Run plumbing a reader of the method can skip: the options and presets (config), the run folder
(rundir), several processes (dist), and the plots of a run (plots)."""
