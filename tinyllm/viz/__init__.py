"""``tl.viz``: looking inside a trained model -- attention maps, saliency, loss curves.

    P = gpt_attention(model, idx)            (L, B, H, T, T) each head's softmax weights
    a = rnn_attention(rnn, idx)              (B, T, T) the document's alpha (eq. 4.2a)
    previous_token_score(P)                  (L, H) mean weight on the t-1 diagonal
    best_previous_token_head(P)              (layer, head, score)
    s = saliency(model, idx, position=-1)    (T,) gradient x input of the next-token log-prob
    randomised_saliency_check(model, idx)    rank correlation trained vs random weights
    plot_attention / plot_heads / plot_saliency / plot_loss_curves -> matplotlib Figure
    draw_graph(tensor)                       a Tensor's history (graphviz, else a Figure)

Every figure is a ``matplotlib.figure.Figure`` from ``tinyllm.autograd.figures.new_figure``:
no pyplot, no global state, inline in Jupyter, ``fig.savefig(path)`` headless. Rank 5 (it
imports models, nn, autograd, data and train; nothing below imports it).
"""
from .attention import (attention_maps, best_previous_token_head, gpt_attention,
                        plot_attention, plot_heads, previous_token_score, rnn_attention)
from .curves import loss_history, plot_loss_curves
from .saliency import (SanityCheck, input_gradient, plot_saliency, randomised_saliency_check,
                       saliency, score_from_embeddings, spearman)

from .graph import draw_graph, graph_nodes

__all__ = ["gpt_attention", "rnn_attention", "attention_maps", "previous_token_score",
           "best_previous_token_head", "plot_attention", "plot_heads", "saliency",
           "input_gradient", "score_from_embeddings", "spearman", "randomised_saliency_check",
           "SanityCheck", "plot_saliency", "loss_history", "plot_loss_curves", "draw_graph",
           "graph_nodes"]
