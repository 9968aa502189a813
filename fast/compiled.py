"""The neurons' loops over T under torch.compile: `CompiledLoops` (one neuron layer's compiled
training and evaluation loops) and `compile_network` (give every neuron layer of a network its
compiled loops, after a probe that the compiler works on the network's device).

The compiled loops run neurons.neuron_loop, the same neuron_step arithmetic as the eager forms, and
keep eager's rounding on every device: on CPU inductor's C++ code is built without floating-point
contraction (its default), and on CUDA the options in INDUCTOR_OPTIONS stop Triton from fusing
v + (x - v) * k into an FMA and from using approximate division (the surrogate's 1 / (1 + ...)).
Tested bit for bit against eager on CPU (tests/test_fast.py) and on CUDA where a GPU exists.

Needs torch >= 2.6 (dynamo's `recompile_limit`); with an older torch compile_network logs one line
and leaves the network eager.
"""
import time

import torch
import torch.nn as nn

from neurons import Neuron, neuron_loop

# Compiled graphs one compiled loop may hold: a graph per input rank, T, dtype, (v_th, alpha) and
# 0/1 sizes, for every network of the process (their loops share one code object, and dynamo keeps
# graphs per code object). Dynamo's default (8) is below what bench.py's T table alone needs, and
# past it dynamo silently runs eager.
RECOMPILE_LIMIT = 256

# Inductor options that keep eager's float32 rounding in generated GPU code (torch 2.13 names):
# no FMA contraction (Triton's enable_fp_fusion off) and IEEE-rounded division; no flush of
# denormals to zero. CPU code needs none of them (no contraction, IEEE division by default).
INDUCTOR_OPTIONS = {"emulate_precision_casts": True, "eager_numerics.division_rounding": True,
                    "eager_numerics.disable_ftz": True}

MIN_TORCH = (2, 6)


def torch_version() -> tuple:
    """(major, minor) of the installed torch."""
    return tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


def inductor_options() -> dict:
    """INDUCTOR_OPTIONS that this torch's inductor knows (an unknown name would be an error)."""
    import torch._inductor.config as inductor
    known = inductor.get_config_copy()
    return {k: v for k, v in INDUCTOR_OPTIONS.items() if k in known}


class CompiledLoops:
    """neurons.neuron_loop under torch.compile for one (v_th, alpha): a training function and a
    no-grad one (two code objects, so grad mode never evicts the other's graphs).
    __call__(x, k): x [T, B, ...] input current, k the leak (0-dim tensor, float or None) -> spikes.

    Both run neuron_step's arithmetic, so their spikes equal the eager forms bit for bit (tested).
    Sizes other than T become dynamic after the first recompilation (dynamo's automatic dynamic
    shapes), so a network compiles a few graphs, not one per layer."""

    def __init__(self, v_th: float, alpha: float):
        self.v_th, self.alpha = v_th, alpha

        def train_loop(x, k):
            return neuron_loop(x, lambda: k, v_th, alpha)

        def eval_loop(x, k):
            return neuron_loop(x, lambda: k, v_th, alpha)

        options = inductor_options()
        self.train = torch.compile(train_loop, options=options)
        self.eval = torch.compile(eval_loop, options=options)
        self.compile_s = 0.0       # seconds spent in the calls that compiled a new graph

    def __call__(self, x, k):
        fn = self.train if torch.is_grad_enabled() else self.eval
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        t = time.perf_counter()
        # v_th and alpha stay constants of the graph: closures of one function share dynamo's
        # state, and a second alpha would otherwise make alpha a traced float, which the
        # surrogate's backward cannot take
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, specialize_float=True):
            out = fn(x, k)
        if torch._dynamo.utils.counters["stats"]["unique_graphs"] != graphs:
            self.compile_s += time.perf_counter() - t
        return out

    def __deepcopy__(self, memo):       # compiled functions are shared, never copied
        return self

    def __reduce__(self):               # pickled (a network sent to another process): compile afresh there
        return CompiledLoops, (self.v_th, self.alpha)


def compile_network(net: nn.Module, log=print) -> nn.Module:
    """Give every neuron layer of `net` compiled loops over T (CompiledLoops), in place (state_dict
    keys unchanged): training, evaluation, the search and the test pass run compiled.

    The neurons' loops over T are where eager mode pays most (many small element-wise ops); convs
    and BN already run as library kernels. Compiling the neuron loop rather than the whole forward
    keeps the super-network usable (its path changes every batch) and the spike counting outside
    the compiled code; layers with the same (v_th, alpha) share one CompiledLoops, whose graphs
    turn dynamic in every size but T after the first recompilation, so a network compiles a few
    graphs, not one per layer. The compiled backward keeps what the compiler's partitioner chooses,
    with no activation checkpoint around it.

    The no-grad loop is compiled once here on the network's device (its parameters' device), as a
    probe: without a working compiler there (no C++ compiler, a broken Triton) or with a torch
    older than MIN_TORCH this logs one line and leaves the network eager. Later graphs compile on
    first use of a shape; CompiledLoops adds the seconds they took to its `compile_s`."""
    neurons = [m for m in net.modules() if isinstance(m, Neuron) and m.kind != "ann"]
    if not neurons:
        return net
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    if torch_version() < MIN_TORCH:
        log(f"compiled neuron loops need torch >= {'.'.join(map(str, MIN_TORCH))} (this is {torch.__version__}): "
            "running eager")
        return net
    loops = {}
    for m in neurons:
        loops.setdefault((m.v_th, m.alpha), CompiledLoops(m.v_th, m.alpha))
    try:
        t = time.perf_counter()
        probe = neurons[0]
        with torch.no_grad():
            loops[(probe.v_th, probe.alpha)](torch.zeros(getattr(net, "T", 2), 2, 3, device=device), probe.leak())
        seconds = time.perf_counter() - t
    except Exception as e:                                      # no C++ compiler, no triton, ...
        log(f"torch.compile unavailable on {device} ({type(e).__name__}: {str(e).splitlines()[0][:120]}): "
            "running eager")
        return net
    for m in neurons:
        m.loops = loops[(m.v_th, m.alpha)]
    log(f"compiled the loops of {len(neurons)} neuron layers with torch.compile on {device} (probe graph "
        f"{seconds:.1f} s; each new input shape compiles on first use, training and evaluation alike)")
    return net
