"""Decision paths: which mask every gated layer chose for one input, clean and attacked."""

import numpy as np
import pandas as pd
import streamlit as st
import torch

from analysis.analyze import dataset_kind
from analysis.adversarial.attacks import create_attack, default_params, list_attacks
from analysis.attribution import decision_attribution
from analysis.counterfactual import counterfactual, runner_up
from analysis.images import ImageError, image_to_input
from analysis.paths import changed_layers, confident_choosers, decision_path, path_neighbours, sankey_links
from app import figures
from app.links import follow_url, in_range, one_of, to_url
from app.widgets import chart
from app.state import get_analysis_array, get_analysis_table, sidebar, split_tensors, try_outputs
from models import gated_convs
from models.export import EXPORT_LOCK

run, split_name = sidebar()
meta, model = run.meta, run.model
st.title("Decision paths")
if not gated_convs(model):
    st.info("This run has no gated layers: every input takes the same path. Open a dynamic run.")
    st.stop()

images, labels, problem = split_tensors(run, split_name)
gates = len(gated_convs(model))
link_problems = [follow_url(key, convert) for key, convert in [
    ("pick", one_of(["by index", "by class", "upload"])), ("attack", one_of(list_attacks())),
    ("eps", in_range(0.0, 0.5, float)), ("stored", one_of([True, False])), ("attr_layer", in_range(0, gates - 1)),
    ("cf_gate", in_range(0, gates - 1))] + ([("index", in_range(0, len(images) - 1))] if images is not None else [])]
for message in filter(None, link_problems):
    st.warning(message)
how = st.radio("Pick an input", ["by index", "by class", "upload"], horizontal=True, key="pick")
x, label = None, None
if how == "upload":
    upload = st.file_uploader("Image (PNG or JPEG)", type=["png", "jpg", "jpeg"], key="upload")
    if upload is not None:
        try:
            x, notes = image_to_input(upload.getvalue(), tuple(meta.input_shape),
                                      max_bytes=st.get_option("server.maxUploadSize") * 2**20)
            if notes:
                st.caption("Upload " + "; ".join(notes) + ".")
        except ImageError as e:
            st.error(f"This upload cannot be used: {e}")
elif problem:
    st.warning(problem)
else:
    if how == "by class":
        cls = st.selectbox("Class", range(len(meta.class_names)), format_func=lambda c: meta.class_names[c], key="cls")
        members = np.flatnonzero(labels.numpy() == cls)[:12]
        if st.session_state.get("class_index") not in members:
            st.session_state["class_index"] = int(members[0])
        for col, i in zip(st.columns(len(members)), members):
            col.image(images[i].permute(1, 2, 0).numpy(), width=48)
            if col.button(f"#{i}", key=f"thumb-{i}", help="open this input"):
                st.session_state["class_index"] = int(i)
        index = st.session_state["class_index"]
        st.caption(f"Input #{index}: click a thumbnail's button to open another.")
    else:
        index = st.number_input("Input index", 0, len(images) - 1, key="index")
    x, label = images[int(index):int(index) + 1], int(labels[int(index)])

if x is None:
    st.stop()



def stored_row(attack: str, source: int) -> int | None:
    """The row of the stored, successful ``attack`` on test input ``source``, if the analysis has one."""
    table = get_analysis_table(str(run.path), meta.weights_sha256, f"attack-{attack}", "rows")
    if table is None:
        return None
    rows = np.flatnonzero((table["source"].to_numpy() == source) & table["success"].to_numpy())
    return int(rows[0]) if len(rows) else None


clean = decision_path(model, x)
left, right = st.columns(2)
with left:
    st.subheader("Clean")
    st.image(x[0].permute(1, 2, 0).numpy(), width=112)
    truth = f" (label {meta.class_names[label]})" if label is not None else ""
    st.metric("Prediction" + truth, meta.class_names[clean.prediction], help=f"p = {clean.class_probs.max():.3f}")
    st.metric("Counted MACs", f"{clean.macs / 1e6:.2f} M", help=f"{clean.macs / clean.ungated_macs:.1%} of the ungated network")

with right:
    st.subheader("Attacked")
    st.session_state.setdefault("attack", "pgd")
    attack_name = st.selectbox("Attack", list_attacks(), key="attack")
    row = stored_row(attack_name, int(index)) if how != "upload" and split_name == "test" else None
    use_stored = row is not None and st.checkbox(
        "The stored attacked example (from the analysis)", key="stored",
        help="the adversarial input the analysis made from this image, instead of a new attack at the epsilon below")
    params = default_params(attack_name, dataset_kind(run))
    if "eps" in params:
        st.session_state.setdefault("eps", float(params["eps"]))
        params["eps"] = st.slider("Epsilon (pixel units, L-inf)", 0.0, 0.5, step=0.005, key="eps", disabled=use_stored)
    if use_stored:
        x_adv = torch.from_numpy(get_analysis_array(str(run.path), meta.weights_sha256, f"attack-{attack_name}",
                                                    "x_adv")[row:row + 1])
    else:
        target = torch.tensor([label if label is not None else clean.prediction])
        with st.spinner(f"Running {attack_name}..."), EXPORT_LOCK:  # not beside another session's export
            torch.manual_seed(0)
            x_adv = create_attack(attack_name, model, **params)(x, target).x_adv
    attacked = decision_path(model, x_adv)
    st.image(x_adv[0].permute(1, 2, 0).numpy(), width=112)
    st.metric("Prediction", meta.class_names[attacked.prediction],
              delta="flipped" if attacked.prediction != clean.prediction else "unchanged", delta_color="off",
              delta_arrow="off")
    change = round((attacked.macs - clean.macs) / 1e6, 2)  # no change is neutral, not a red "+0.00 M"
    st.metric("Counted MACs", f"{attacked.macs / 1e6:.2f} M", delta=f"{change:+.2f} M" if change else "no change",
              delta_color="inverse" if change else "off", delta_arrow="auto" if change else "off")

to_url(pick=how, index=int(index) if how == "by index" else None, attack=attack_name,
       eps=params.get("eps") if not use_stored else None, stored=use_stored or None)
changed = changed_layers(clean, attacked)
st.markdown(f"**Layers whose decision changed under attack:** {', '.join(f'gate {l}' for l in changed) or 'none'}")
cols = st.columns(2)
chart(cols[0], figures.path_heatmap(clean.probs, clean.actions, title="clean"), key="path_clean")
chart(cols[1], figures.path_heatmap(attacked.probs, attacked.actions, changed=changed, title="attacked"),
                     key="path_attacked")
chart(st, figures.channel_strips(clean.masks), key="strips")
per_layer = pd.DataFrame({"layer": clean.layer_names, "MACs (clean)": clean.layer_macs,
                          "MACs (attacked)": attacked.layer_macs})
st.dataframe(per_layer, hide_index=True)
st.download_button("Download path (CSV)", pd.DataFrame({
    "gate": range(len(clean.actions)), "action": clean.actions, "active": clean.active,
    "action attacked": attacked.actions, "active attacked": attacked.active}).to_csv(index=False),
    file_name="path.csv", mime="text/csv")

st.subheader("Why this decision")
c1, c2 = st.columns(2)
layer = c1.selectbox("Gated layer", range(len(clean.actions)), format_func=lambda l: f"gate {l}", key="attr_layer")
method = c2.radio("Method", ["integrated_gradients", "saliency"], horizontal=True, key="attr_method")
to_url(attr_layer=layer)
attr, action, prob = decision_attribution(model, x, layer, method=method)
st.caption(f"Attribution of p(action {action}) = {prob:.3f} at gate {layer} with respect to the input: "
           "red pixels raise it, blue ones lower it.")
a1, a2, _ = st.columns([1, 1, 2])
a1.image(x[0].permute(1, 2, 0).numpy(), width=168, caption="input")
a2.image(figures.attribution_image(attr), width=168, caption=f"attribution ({method.replace('_', ' ')})")

st.subheader("What if a gate chose otherwise")
st.caption("Force one gate to take another mask for this clean input; the gates after it decide freely on what "
           "the forced mask lets through.")
f1, f2 = st.columns(2)
forced_gate = f1.selectbox("Gate", range(len(clean.actions)), format_func=lambda l: f"gate {l}", key="cf_gate")
to_url(cf_gate=forced_gate)
second = runner_up(clean, forced_gate)
options = [second] + [a for a in range(clean.probs.shape[1]) if a != second]
forced_action = f2.selectbox("Action to force", options, key=f"cf_action_{forced_gate}", format_func=lambda a: (
    f"action {a} (the runner-up, p = {clean.probs[forced_gate, a]:.3f})" if a == second
    else f"action {a} (p = {clean.probs[forced_gate, a]:.3f})" + (", the one it took" if a == clean.actions[forced_gate] else "")))
cf = counterfactual(model, x, {forced_gate: int(forced_action)})
m1, m2, m3 = st.columns(3)
m1.metric("Prediction when forced", meta.class_names[cf.forced.prediction],
          delta="changed" if cf.forced.prediction != clean.prediction else "unchanged", delta_color="off",
          delta_arrow="off", help=f"p = {cf.forced.class_probs.max():.3f}; as decided: {meta.class_names[clean.prediction]}")
m2.metric("Later gates that changed their choice", len(cf.knock_on),
          help=", ".join(f"gate {l}: {clean.actions[l]} -> {cf.forced.actions[l]}" for l in cf.knock_on) or "none")
shift = round(cf.macs_change / 1e6, 3)
m3.metric("Counted MACs when forced", f"{cf.forced.macs / 1e6:.2f} M",
          delta=f"{shift:+.3f} M" if shift else "no change", delta_color="inverse" if shift else "off",
          delta_arrow="auto" if shift else "off")
if cf.knock_on:
    st.markdown("**Knock-on changes:** " + ", ".join(
        f"gate {l} took action {cf.forced.actions[l]} instead of {clean.actions[l]}" for l in cf.knock_on))
cols = st.columns(2)
chart(cols[0], figures.class_probabilities({"as decided": clean.class_probs, "forced": cf.forced.class_probs},
                                           meta.class_names), key="cf_probs")
chart(cols[1], figures.path_heatmap(cf.forced.probs, cf.forced.actions, changed=changed_layers(clean, cf.forced),
                                    title=f"forced: gate {forced_gate} takes action {forced_action}"), key="cf_path")



def thumbnails(images, captions: list[str]) -> None:
    """A row of small images (each (C, H, W)) with captions."""
    if len(images):
        st.image([np.asarray(im).transpose(1, 2, 0) for im in images], width=84, caption=captions)
    else:
        st.caption("None.")


def names(c) -> str:
    return meta.class_names[int(c)]


if not problem:
    outputs, _ = try_outputs(run, split_name)
    features = np.exp(outputs.log_probs).reshape(len(outputs.labels), -1)  # decision features (N, L*K)
    adv = get_analysis_table(str(run.path), meta.weights_sha256, f"attack-{attack_name}", "rows")
    adv = adv if split_name == "test" else None  # stored attacks are of the test split
    st.subheader("Inputs that took the same road")
    st.caption("The nearest inputs in path space: how many gates chose differently (Hamming distance), ties "
               "broken by the distance between decision features.")
    near, hamming = path_neighbours(outputs.paths, features, clean.actions, clean.probs.ravel(),
                                    exclude=None if how == "upload" else int(index))
    thumbnails(images[near], [f"#{i}: {names(outputs.labels[i])}→{names(outputs.preds[i])}, {d} off"
                              for i, d in zip(near, hamming)])
    if adv is not None:
        log_probs = get_analysis_array(str(run.path), meta.weights_sha256, f"attack-{attack_name}", "log_probs")
        x_adv = get_analysis_array(str(run.path), meta.weights_sha256, f"attack-{attack_name}", "x_adv")
        gate_cols = [c for c in adv.columns if c.startswith("path_")]
        near, hamming = path_neighbours(adv[gate_cols].to_numpy(), np.exp(log_probs).reshape(len(adv), -1),
                                        clean.actions, clean.probs.ravel())
        st.markdown(f"Attacked with {attack_name} (stored analysis, test split):")
        thumbnails(x_adv[near], [f"#{adv['source'].iloc[i]}: {names(adv['label'].iloc[i])}→{names(adv['pred'].iloc[i])}"
                                 f", {d} off" for i, d in zip(near, hamming)])
    g1, g2 = st.columns(2)
    gate = g1.selectbox("Gate", range(len(clean.actions)), format_func=lambda l: f"gate {l}", key="road_gate")
    used = np.unique(outputs.paths[:, gate])
    choice = g2.selectbox("Action", used, key=f"road_action_{gate}",
                          index=int(np.searchsorted(used, clean.actions[gate])) if clean.actions[gate] in used else 0,
                          format_func=lambda a: f"action {a}" + (" (this input's)" if a == clean.actions[gate] else ""))
    sure = confident_choosers(outputs.log_probs, gate, int(choice))
    st.markdown(f"The inputs that choose action {choice} at gate {gate} most confidently "
                f"({int((outputs.paths[:, gate] == choice).sum()):,} of {len(outputs.labels):,} choose it):")
    thumbnails(images[sure], [f"#{i}: {names(outputs.labels[i])}, p {np.exp(outputs.log_probs[i, gate, choice]):.2f}"
                              for i in sure])

    st.subheader("Paths of one class")
    cls = st.selectbox("Class", range(len(meta.class_names)), format_func=lambda c: meta.class_names[c],
                       key="sankey_class")
    chart(st, figures.sankey(*sankey_links(outputs.paths[outputs.labels == cls]),
                                   title=f"clean inputs of class {meta.class_names[cls]}"), key="sankey_clean")
    members = np.flatnonzero(outputs.labels == cls)
    node = st.selectbox("Examples of a node (gate:action)", sorted({(l, int(a)) for l in range(outputs.paths.shape[1])
                                                                    for a in outputs.paths[members, l]}),
                        format_func=lambda n: f"g{n[0]}:a{n[1]}", key=f"sankey_node_{cls}")
    sure = confident_choosers(outputs.log_probs, node[0], node[1], among=members)
    thumbnails(images[sure], [f"#{i}: →{names(outputs.preds[i])}, p {np.exp(outputs.log_probs[i, node[0], node[1]]):.2f}"
                              for i in sure])
    if adv is not None:
        rows = adv[adv["success"] & (adv["label"] == cls)]
        gate_cols = [c for c in rows.columns if c.startswith("path_")]
        if len(rows):
            chart(st, figures.sankey(*sankey_links(rows[gate_cols].to_numpy()),
                                           title=f"the same class attacked with {attack_name} (stored analysis)"),
                            key="sankey_attacked")
    else:
        st.page_link("views/feature_map.py", label="Compute the run's analysis (on the map page) to compare with "
                                                   "attacked inputs of the class")
