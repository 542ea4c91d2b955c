"""The `spo` commands, one module each, every one a thin layer over library functions
(spo.cli holds the parser and the error handling):

    train.py   spo train    -> spo.api.train
    eval.py    spo eval     -> spo.api.evaluate
    sft.py     spo sft      -> spo.train.sft.run_sft
    bench.py   spo bench    estimators compared on one task, model and budget (table + plots)
    credit.py  spo credit   credit-assignment accuracy against Monte-Carlo ground truth
               (the two-line dispatchers of these two, cmd_bench / cmd_credit, are in spo.cli)
    inspect.py spo inspect  a run's episodes token by token (spo.inspect builds the page)
    plot.py    spo plot     learning curves of runs as PNG
    options.py spo options  every option with its default
"""
