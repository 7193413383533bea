import dataclasses

import streamlit as st

from pages import _cached, _dataset, _images, _netron, _route, _runs, _state, _working
from vislab.export import formats as export, netron as netron_web
from vislab.views import base as views

_route.through_app()  # first: a page opened on its own (the first request after a restart) goes through app.py

# ---- this page's keys (kept: a person's settings, see _state.kept) ------------------------------------------
EXPORT_RESULT = "export_result"  # the Export page's last ExportResult (file, check, warnings)
EXPORT_FMT = "export_fmt"
EXPORT_DOWNLOAD = "export_download"
LAYER_TABLE = "layer_table"

_dataset.open_page()
ss = st.session_state
st.title("Export & Netron")
st.markdown("`print(model)` lists modules in the order they were **defined**, which is not always the order "
            "they **run**. Export the model, open it in Netron (bundled, offline) and read the real layer names "
            "before deciding what to freeze. Every file is reloaded and compared with the model before it is "
            "offered.")


def _same_file(a, b) -> bool:
    """Whether Netron's served copy `a` is the file `b` (a hard link or a copy with its size and mtime)."""
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:
        return False
    return (sa.st_size, sa.st_mtime_ns) == (sb.st_size, sb.st_mtime_ns)


@st.cache_resource
def _exports() -> export.Exports:
    """The server's verified exports by model, format and destination (vislab.export.formats.Exports), shared by every
    session: a file already exported and checked for this model is offered again, not redone."""
    return export.Exports()


vm = _runs.view_models("export", allow_both=False)[0]
c1, c2 = st.columns([2, 3])
fmt = c1.radio("Format", export.FORMATS, horizontal=True, key=_state.kept(EXPORT_FMT),
               format_func=lambda f: {"torchscript": "TorchScript (.pt)", "onnx": "ONNX", "pt2": "torch.export (.pt2)"}[f])
c2.caption({"torchscript": "torch.jit.trace at the model's input size, as the course does. Deprecated in torch 2.14 "
                           "(the warning is shown below); still what many tools read.",
            "onnx": "torch.onnx.export; checked with onnxruntime. Netron shows BatchNorm folded into the convolutions.",
            "pt2": "torch.export: the successor of tracing."}[fmt])
size = vm.data_config.input_size
folder = _dataset.uploads_folder() / "export"
strategy = ss[_state.STRATEGY] if vm.label.startswith("fine-tuned") else "pretrained"
name = export.export_name(ss[_state.MODEL], strategy, fmt)
meta = export.metadata(ss[_state.MODEL], vm.classes, vm.data_config)
PHOTOS = ("cat", "coffee")
# what the file and its check depend on: the model's weights (hashed once per model), format, size, file, images
key = export.export_key(vm.model, size, folder / name, fmt, meta=meta,
                        inputs=f"photos {PHOTOS} through {vm.data_config.to_dict()}")
if st.button("Export and verify", type="primary"):
    known = _exports().get(key)
    if known is not None:  # nothing it depends on changed: the same file, already checked
        ss[EXPORT_RESULT] = dataclasses.replace(known, reused=True)
    else:
        folder.mkdir(exist_ok=True)
        real = views.batch([_images.photo(p) for p in PHOTOS], vm.data_config)  # (2, 3, H, W)
        with st.spinner(f"Exporting {name} and checking it against the model…"), _cached.model_lock(vm.model):
            ss[EXPORT_RESULT] = _exports().export(vm.model, size, folder / name, fmt, key=key,
                                                         real_inputs=real, meta=meta)

result = ss.get(EXPORT_RESULT)
if result is None or result.key != key:  # the session's last export was of another model or format
    result = _exports().get(key)  # this model's verified file in this format (any session's), else nothing
if result is not None:
    if not result.ok:
        st.error(f"Not offered: {result.reason}")
    else:
        verdict = (f"max |file − model| = **{result.max_abs_diff:.2e}** (tolerance {result.tol:g}) over "
                   f"{result.checked}" if result.verified else f"not verified: {result.reason}")
        st.success(f"`{result.path.name}` · {result.size_bytes / 1e6:.1f} MB · exported in {result.seconds:.1f} s · "
                   + verdict)
        if result.reused or result is not ss.get(EXPORT_RESULT):
            st.caption("This model has not changed since this file was exported and checked: it is offered as it is "
                       "(exporting again would write the same file).")
        st.download_button("Download the file", result.path.read_bytes, file_name=result.path.name,  # read on click
                           mime="application/octet-stream", key=EXPORT_DOWNLOAD)
    if result.warnings:  # torch's deprecation notes, folded into one box (the file was checked above anyway)
        n = len(result.warnings)
        with st.expander(f"{n} warning{'s' if n != 1 else ''} from torch while exporting (shown, not hidden)",
                         icon=":material/warning:"):
            st.markdown("\n".join(f"- `{w[:400]}`" for w in result.warnings))

viewer = _netron.current_netron()
if result is not None and result.ok and result.path and (viewer is None or not _same_file(viewer.viewer.file,
                                                                                         result.path)):
    try:  # this session's viewer shows another file (or none): one on the file shown above, once
        viewer = _netron.netron_for(result.path)
    except (OSError, ValueError) as exc:
        viewer = None
        st.error(f"Netron could not be prepared: {exc}")
if viewer is not None and result is not None and result.ok:
    st.subheader("Netron")
    st.caption("Netron's own viewer, served by this lab's server at its own address (no other port, so it "
               "opens wherever this page opens), showing only this export; it goes when you export again or "
               f"leave. With internet you can also drop the downloaded file on {netron_web.hosted_url()}. "
               "In Netron, Ctrl+U shows each node's name.")
    st.link_button("Open Netron in a new tab", viewer.url)
    st.iframe(viewer.url, height=720)

st.subheader("Layer names: execution order vs definition order")
model, info = _working.working()
rows = _cached.layer_table((ss[_state.MODEL], ss[_state.HEAD], info.num_classes, tuple(info.data_config.input_size)),
                           model)
live = {n: any(p.requires_grad for p in m.parameters()) for n, m in model.named_modules()}
table = [{"run #": r["exec_index"], "print # ": r["def_index"], "layer": r["name"], "type": r["type"],
          "order differs": "⚠ moved" if r["moved"] else "", "params": r["params"],
          "state": ("trainable" if live.get(r["name"]) else "frozen") if r["params"] else "-"} for r in rows]
moved = sum(1 for r in rows if r["moved"])
st.caption(f"{len(rows)} leaf layers of the working model `{ss[_state.MODEL]}`; {moved} run in a different place "
           "than `print(model)` shows them. Select rows to freeze or thaw those layers (same as the Freeze page).")
picked = st.dataframe(table, hide_index=True, width="stretch", on_select="rerun", selection_mode="multi-row",
                      key=LAYER_TABLE, height=420)
names = [table[i]["layer"] for i in picked.selection.rows if table[i]["params"]]
b1, b2, _ = st.columns([1, 1, 4])
if b1.button("Freeze selected", disabled=not names):
    _working.set_modules_trainable(names, False)
    st.rerun()
if b2.button("Thaw selected", disabled=not names):
    _working.set_modules_trainable(names, True)
    st.rerun()
