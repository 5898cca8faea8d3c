"""First-party engines of ptyframe: the full-batch engine (one optimizer step per epoch over
every measurement of the epoch's sequence) and the mini-batch engine (preconditioned
mini-batch passes first, then full batch), registered exactly as a third-party plugin would
be."""

from ptyframe.registry.hookspecs import hookimpl


@hookimpl
def ptyframe_register_components():
    from .full_batch import FullBatch
    from .mini_batch import MiniBatch

    return [FullBatch, MiniBatch]
