"""Several machines of the same GPUs, for serving-engine plans across nodes (fitplan.engines): `--gpu 2x8xh100`
and `nodes:` in a hardware file or a profile's `hardware:`. A `Hardware` then lists every GPU and says
`gpus_per_node`."""
from __future__ import annotations

import re

from ..errors import FileError, OptionError
from ..yamlsource import YamlMap, describe

#: `--gpu 2x8xh100`: 2 nodes of 8 H100s.
NODES = re.compile(r"^(\d+)\s*[x×*]\s*(\d+)\s*[x×*]\s*([^,]+)$", re.IGNORECASE)


def parse_nodes(text: str) -> tuple[int, int, str] | None:
    """(nodes, GPUs per node, GPU name) of `NxMxNAME`, None for any other `--gpu` text."""
    m = NODES.match(text.strip())
    if not m:
        return None
    n, per = int(m.group(1)), int(m.group(2))
    if n < 1 or per < 1:
        raise OptionError(f"--gpu {text!r}: nodes and GPUs per node must be at least 1; write e.g. '2x8xh100'",
                          option="gpu")
    return n, per, m.group(3).strip()


def file_nodes(doc: YamlMap, n_gpus: int, what: str = "nodes") -> int | None:
    """GPUs per node of a hardware mapping's `nodes:` (None: one machine), checked against the GPUs it lists.
    `what` names the key in errors (`hardware.nodes` in a profile)."""
    nodes = doc.get("nodes", 1)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1 or (n_gpus and n_gpus % nodes):
        raise FileError(f"{doc.where('nodes')}: {what} must be a whole number of machines that divides the {n_gpus} "
                        f"GPUs listed (each node has the same GPUs), got {describe(nodes)}", **doc.at("nodes"))
    return n_gpus // nodes if nodes > 1 and n_gpus else None


def nodes_note(n_gpus: int, per_node: int | None) -> tuple[str, ...]:
    """The plan note of several machines (none for one)."""
    return (f"{n_gpus // per_node} nodes of {per_node} GPUs",) if per_node else ()
