"""Figures without pyplot: a :class:`matplotlib.figure.Figure` is not registered with any
backend, so writing one leaves the caller's backend alone (a notebook keeps its inline
plots) and needs no display."""


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, **kwargs):
    """``(figure, axes)`` like ``pyplot.subplots``, on a standalone Figure."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)
