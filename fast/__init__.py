"""Fast execution forms of the network: the same arithmetic as the plain forms in neurons.py and
layers.py, run with fewer copies, fewer kernel launches or compiled, each tested equal to the plain
form bit for bit (tests/test_fast.py).

    compiled.py   the neurons' loops over T under torch.compile (CompiledLoops, compile_network)
    steps.py      the per-time-step layers of training (BatchNorm, convolutions) without the stacks
                  and extra calls around their per-step calls
    graphs.py     a child network's training and evaluation steps captured as CUDA graphs

A reader of the method can skip this folder: the copy-out set (autosnn, layers, neurons, spikes,
search_space, files) never imports it.
"""
