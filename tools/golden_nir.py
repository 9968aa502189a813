"""Make the NIR golden numbers of test_nir.py with independent NIR readers (Norse, snnTorch).

The readers are never dependencies of the project: this script runs once, in a scratch environment
that reuses the system torch, and its output (numbers only) is stored in tests/data/nir/:

    python3 -m venv --system-site-packages /tmp/nirvenv
    /tmp/nirvenv/bin/pip install nir nirtorch norse snntorch
    /tmp/nirvenv/bin/pip uninstall -y torch torchvision triton   # norse pulls a second torch: use the system one
    /tmp/nirvenv/bin/python tools/golden_nir.py train    # tests/data/nir/model.pt, inputs.npz (a small trained net)
    /tmp/nirvenv/bin/python tools/golden_nir.py golden   # tests/data/nir/golden.npz (the readers' spikes and scores)

`train`: an AutoSNN_4 child network (SRB with identity and with 1x1-conv shortcut, skip_connect,
SCB, three max-pools; PLIF; T = 4), 4 classes of the synthetic gratings (data.synthetic_images),
trained for a few epochs on the CPU; 16 fixed test images (4 per class) stored as uint8 pixels.
`golden`: the network exported with export.nir.to_nir, written to and read back from a .nir file,
then run one image and one time step at a time by
  - Norse 1.1: its NIR node mapping (norse.torch.utils.import_nir, LIFBoxCell etc.) executed by
    nirtorch.nir_to_torch (graph at dt = 1, Norse at dt = 1). Not norse.torch.from_nir itself: that
    goes through the deprecated nirtorch.load, whose depth-first execution order runs a residual
    join (an SRB's last neuron) before one of its branches, so it adds that branch's previous-step
    output (and it returns the second-to-last node when the Output node has no module);
  - snnTorch 1.0: snntorch.import_nir.import_from_nir (its own nirtorch.nir_to_torch path); it
    fixes dt = 1e-4 and reads neither SumPool2d nor AvgPool2d for Norse's sake, so it gets the graph
    exported at dt = 1e-4 with pooling='conv' (2x2 stride-2 convs, channel-diagonal weights 1, before the threshold).
Stored per reader: every neuron node's output spikes [T, B, ...] (bit-packed), class scores [B, K].
"""
import argparse
import functools
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from autosnn import SpikingNetwork, load_model, rate_loss, save_model  # noqa: E402
from data import NORMALISATION, synthetic_images  # noqa: E402
from export.nir import to_nir  # noqa: E402


OUT = ROOT / "tests" / "data" / "nir"
ARCH, BACKBONE, CLASSES, T = "SRB_k3-SRB_k3-skip_connect-SCB_k3-SRB_k3", "AutoSNN_4", 4, 4


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float32, as data.py normalises the synthetic dataset."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in NORMALISATION["synthetic"])
    return (torch.from_numpy(images).float() / 255 - mean) / std


def four_classes(n, seed):
    x, y = synthetic_images(n, seed)
    keep = y < CLASSES
    return x[keep], y[keep]


def train(epochs=6, seed=0):
    torch.manual_seed(seed)
    x, y = four_classes(1000, seed=11)
    net = SpikingNetwork(BACKBONE, CLASSES, arch=ARCH, T=T)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 32):
            idx = perm[i:i + 32].numpy()
            out, _ = net(normalise(x[idx]))
            loss = rate_loss(out, torch.from_numpy(y[idx]), T)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: last loss {loss.item():.4f}")
    xt, yt = four_classes(40, seed=12)
    xt, yt = xt[:16], yt[:16]
    net.eval()
    with torch.no_grad():
        out, stats = net(normalise(xt))
    print(f"test acc {(out.argmax(1).numpy() == yt).mean():.3f}, firing rates",
          {k: round(v, 3) for k, v in stats.summary()["firing_rate"].items()})
    OUT.mkdir(parents=True, exist_ok=True)
    save_model(net, OUT / "model.pt")
    np.savez_compressed(OUT / "inputs.npz", images=xt, labels=yt)


def norse_module(graph):
    import nir
    import nirtorch
    from norse.torch.utils.import_nir import _import_norse_module
    f = functools.partial(_import_norse_module, dt=float(graph.metadata["dt"]))
    kinds = (nir.LIF, nir.IF, nir.Conv2d, nir.SumPool2d, nir.Affine, nir.Linear, nir.Flatten)
    return nirtorch.nir_to_torch(graph, {k: f for k in kinds}), ("LIFBoxCell", "IAFCell")


def snntorch_module(graph):
    from snntorch.import_nir import import_from_nir
    return import_from_nir(graph), ("Leaky",)


def run_reader(make, graph, images: torch.Tensor):
    """One image at a time (no batch dimension: NIR shapes have none), T steps each.
    Returns (scores [B, K], {node name: spikes [T, B, ...] float32})."""
    names = {n.replace(".", "_"): n for n in graph.nodes}
    scores, spikes = [], {}
    for b in range(images.shape[0]):
        module, neuron_types = make(graph)            # a fresh module: no state carried between images
        rec = {}
        for n, m in module.named_modules():
            if type(m).__name__ in neuron_types:
                m.register_forward_hook(lambda m, i, o, n=n: rec.setdefault(n, []).append(
                    (o[0] if isinstance(o, tuple) else o).detach().clone()))
        state, total = None, 0
        with torch.no_grad():
            for _ in range(T):
                if neuron_types == ("Leaky",):
                    out = module(images[b])
                    out = out[0] if isinstance(out, tuple) else out
                else:
                    out, state = module(images[b], state) if state is not None else module(images[b])
                total = total + out
        scores.append(total)
        for n, v in rec.items():
            spikes.setdefault(names[n], []).append(torch.stack(v))
    return torch.stack(scores), {k: torch.stack(v, 1) for k, v in spikes.items()}


def golden():
    import importlib.metadata as md

    import nir
    net = load_model(OUT / "model.pt")
    data = np.load(OUT / "inputs.npz")
    x = normalise(data["images"])
    arrays, provenance = {}, {"versions": {p: md.version(p) for p in ("nir", "nirtorch", "norse", "snntorch")}}
    provenance["versions"]["torch"] = torch.__version__
    for reader, make, dt, pooling in (("norse", norse_module, 1.0, "sum"), ("snntorch", snntorch_module, 1e-4, "conv")):
        buf = io.BytesIO()
        nir.write(buf, to_nir(net, dt=dt, pooling=pooling))
        buf.seek(0)
        graph = nir.read(buf)
        scores, spikes = run_reader(make, graph, x)
        arrays[f"{reader}/scores"] = scores.numpy().astype(np.float32)
        for name, s in spikes.items():
            assert set(np.unique(s.numpy())) <= {0.0, 1.0}, (reader, name)
            arrays[f"{reader}/spikes/{name}"] = np.packbits(s.numpy().astype(bool).ravel())
            arrays[f"{reader}/shape/{name}"] = np.array(s.shape)
        provenance[reader] = {"dt": dt, "pooling": pooling, "predictions": scores.argmax(1).tolist(),
                              "spikes_per_layer": {k: int(v.sum()) for k, v in spikes.items()}}
        print(reader, provenance[reader])
    arrays["provenance"] = np.array(json.dumps(provenance))
    np.savez_compressed(OUT / "golden.npz", **arrays)
    print(f"wrote {OUT / 'golden.npz'} ({(OUT / 'golden.npz').stat().st_size} bytes)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["train", "golden"])
    a = p.parse_args()
    train() if a.what == "train" else golden()
