"""Hand-crafted spiking networks the paper compares AutoSNN with, built from autosnn.py's parts.

Each baseline uses the same neurons (PLIF by default), T, rate loss, 10-neuron-per-class output
population and spike definition as an AutoSNN child network, and the same forward interface:
`out, stats = net(x, energy=False)`. Layer lists follow the original code's conventional models
(default widths C as there; parameter counts in test_baselines.py):

    cifarnet-wu         (C=128) conv C, 2C | avg-pool | 4C | avg-pool | 8C, 4C | FC 4C*8*8 -> 8C -> 4C -> 10K
    cifarnet-fang       (C=256) conv C x3 | max-pool | C x3 | max-pool | FC C*8*8 -> 8C -> 10K
    resnet11-lee        (C=64)  conv C | avg-pool | SRB 2C, 4C/2, 8C, 8C/2 | FC 8C*4*4 -> 16C -> 10K
    resnet19-zheng      (C=128) conv C | SRB C x3, 2C/2, 2C x2, 4C/2, 4C | avg-pool | FC 4C*4*4 -> 2C -> 10K
    resnet19-zheng-nopool        as above without the final pool: FC 4C*8*8 -> 2C
    resnet19-zheng-gap           spiking global average pool instead: FC 4C -> 2C
    dvs-cifarnet-fang   (C=128) [conv C, max-pool] x4 (x5 with 11 classes) | FC C*s*s -> 4C -> 10K
    dvs-resnet17-zheng  (C=64)  AutoSNN's DVS stem | SRB C/2, C x2, 2C/2, 2C x3 | avg-pool | FC 2C*4*4 -> 4C -> 10K

"/2" is a stride-2 block; "avg-pool" is 2x2 average pooling followed by a neuron; every conv is
3x3 + BN + neuron and every hidden FC is followed by a neuron. The first conv of a static-image
network runs once per image (direct encoding), as in AutoSNN. Unlike the original ResNet
baselines, which ran T-1 time steps, all T steps run.
"""
import torch
import torch.nn as nn

from autosnn import (POPULATION, Stem, check_input, load_weights, population_rates, read_model_file,
                     sum_over_steps)
from files import AutoSNNError
from layers import SRB, AvgPoolNeuron, ConvBN, GlobalPoolNeuron, MaxPool, over_time
from neurons import neuron_factory
from spikes import SpikeStats, Trace, recording


BASELINES = {
    # name: (default width, input kind, layer list as (kind, width multiple, stride), hidden FC widths)
    "cifarnet-wu": (128, "static", [("c", 2, 1), ("a",), ("c", 4, 1), ("a",), ("c", 8, 1), ("c", 4, 1)], [8, 4]),
    "cifarnet-fang": (256, "static", [("c", 1, 1), ("c", 1, 1), ("m",), ("c", 1, 1), ("c", 1, 1), ("c", 1, 1),
                                      ("m",)], [8]),
    "resnet11-lee": (64, "static", [("a",), ("r", 2, 1), ("r", 4, 2), ("r", 8, 1), ("r", 8, 2)], [16]),
    "resnet19-zheng": (128, "static", [("r", 1, 1)] * 3 + [("r", 2, 2), ("r", 2, 1), ("r", 2, 1), ("r", 4, 2),
                                                           ("r", 4, 1), ("a",)], [2]),
    "dvs-cifarnet-fang": (128, "event", [("m",), ("c", 1, 1), ("m",), ("c", 1, 1), ("m",), ("c", 1, 1), ("m",)],
                          [4]),
    "dvs-resnet17-zheng": (64, "event128", [("r", 1, 2), ("r", 1, 1), ("r", 1, 1), ("r", 2, 2), ("r", 2, 1),
                                            ("r", 2, 1), ("r", 2, 1), ("a",)], [4]),
}
BASELINES["resnet19-zheng-nopool"] = BASELINES["resnet19-zheng"][:2] + (BASELINES["resnet19-zheng"][2][:-1], [2])
BASELINES["resnet19-zheng-gap"] = BASELINES["resnet19-zheng"][:2] + (BASELINES["resnet19-zheng"][2][:-1] + [("g",)],
                                                                     [2])


class ConvBNNeuron(nn.Module):
    """conv 3x3 + BN + neuron. x: [T, B, Cin, H, W] -> [T, B, Cout, H/s, W/s]."""

    def __init__(self, cin, cout, stride, neuron):
        super().__init__()
        self.cb, self.n1 = ConvBN(cin, cout, 3, stride), neuron()

    def forward(self, x):
        x = self.cb(x)
        return self.n1(x)


class HandcraftedSNN(nn.Module):
    """A baseline by name (see BASELINES). input_shape: (3, 32, 32) or (T, 2, 128, 128) / (2, 128, 128).
    forward(x, arch=None, energy=False) -> (out [B, K] class rates summed over T, SpikeStats)."""

    def __init__(self, name: str, num_classes: int = 10, T: int = 8, input_shape=(3, 32, 32), width: int = 0,
                 neuron: str = "plif", tau0: float = 2.0, v_th: float = 1.0, alpha: float = 2.0):
        super().__init__()
        if name not in BASELINES:
            raise AutoSNNError(f"unknown model {name!r}; valid: {', '.join(BASELINES)}")
        C, stem_kind, layers, hidden = BASELINES[name]
        C = width or C
        shape = tuple(input_shape)[-3:]
        want = (3, 32, 32) if stem_kind == "static" else (2, 128, 128)
        if shape != want:
            raise AutoSNNError(f"{name} takes input {want}, not {shape}")
        if not (isinstance(T, int) and T >= 1) or neuron == "ann":
            raise AutoSNNError(f"baselines are spiking networks with T >= 1 (got T={T!r}, neuron={neuron!r})")
        try:
            make_neuron = neuron_factory(neuron, tau0, v_th, alpha)
        except ValueError as e:
            raise AutoSNNError(str(e)) from None
        self.options = {"name": name, "num_classes": num_classes, "T": T, "input_shape": list(shape),
                        "width": width, "neuron": neuron, "tau0": tau0, "v_th": v_th, "alpha": alpha}
        if name == "dvs-cifarnet-fang" and num_classes == 11:       # DVS128-Gesture: one more conv + pool
            layers = layers + [("c", 1, 1), ("m",)]
        self.name, self.T, self.num_classes, self.input_shape, self.neuron = name, T, num_classes, shape, neuron
        self.arch = None

        self.stem = Stem(stem_kind, shape[0], C, make_neuron)
        side, cin, body = (shape[1] // 4 if stem_kind == "event128" else shape[1]), C, []
        for spec in layers:
            kind = spec[0]
            if kind in ("c", "r"):
                cout, stride = C * spec[1], spec[2]
                body.append(ConvBNNeuron(cin, cout, stride, make_neuron) if kind == "c"
                            else SRB(cin, cout, 3, stride, make_neuron))
                cin, side = cout, side // stride
            elif kind == "g":
                body.append(GlobalPoolNeuron(make_neuron))
                side = 1
            else:
                body.append(MaxPool() if kind == "m" else AvgPoolNeuron(make_neuron))
                side //= 2
        self.layers = nn.ModuleList(body)
        widths = [cin * side * side] + [C * h for h in hidden] + [num_classes * POPULATION]
        self.fcs = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(widths, widths[1:]))
        self.fc_neurons = nn.ModuleList(make_neuron() for _ in self.fcs)

    def spec(self) -> dict:
        """Everything needed to rebuild this network (load_model)."""
        return {"kind": "baseline", **self.options}

    def forward(self, x: torch.Tensor, arch=None, energy: bool = False):
        if arch is not None:
            raise AutoSNNError(f"{self.name} is a fixed network: it takes no architecture")
        check_input(x, self.T, self.input_shape, self.stem.kind.startswith("event"), self.name)
        trace = Trace(energy=energy)
        h = self.stem(self.stem.encode(x, self.T, trace), trace)
        with recording(trace, self.layers, "layers"), recording(trace, self.fcs, "fcs"), \
                recording(trace, self.fc_neurons, "fc_neurons"):
            for layer in self.layers:
                h = layer(h)
            h = h.flatten(2)
            for fc, n in zip(self.fcs, self.fc_neurons):
                h = n(over_time(fc, h, fc.weight))
        out = sum_over_steps(population_rates(h, self.num_classes))
        return out, SpikeStats.from_trace(trace, x.shape[0], self.T, x.device)


def load_model(path, map_location="cpu") -> HandcraftedSNN:
    """A baseline saved with autosnn.save_model, in eval mode. path: the file or a run folder (model.pt).
        net = baselines.load_model("runs/X"); out, stats = net(images)"""
    path, doc = read_model_file(path, map_location=map_location)
    spec = dict(doc["spec"])
    if spec.pop("kind", None) != "baseline":
        raise AutoSNNError(f"{path}: an AutoSNN network, not a baseline: load it with SpikingNetwork.load")
    try:
        net = HandcraftedSNN(**spec)
    except TypeError as e:                       # a spec with unknown or missing fields
        raise AutoSNNError(f"{path}: the network spec does not fit this code ({e}); rerun") from None
    return load_weights(net, doc["state_dict"], path).to(map_location).eval()
