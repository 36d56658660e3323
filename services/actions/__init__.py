"""The actions context: actions (code YYYY-NN) opened on approved requests, and their activities."""
