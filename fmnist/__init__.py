"""Shared code of the Fashion-MNIST pipeline: data, model, training, metrics, params.

The stage scripts in `stages/` read files and call these functions; nothing in this
package reads or writes files.
"""
