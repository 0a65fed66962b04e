"""Files people read: tables, plots and pages written from analysed results.

- ``markdown``: tables as Markdown and CSV text.
- ``plots``: PNG figures (accuracy bars, loss curves).
- ``html``: the interactive page (one self-contained HTML file; its script is ``html.js``).
- ``analysis``: the files of ``peftbench analyze``, from ``peftbench.analyze``'s accuracy table.

A study's page (``peftbench.studies.page``) uses these too; ``report`` knows nothing of studies.
"""
