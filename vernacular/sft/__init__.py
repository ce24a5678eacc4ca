"""Chat fine-tuning (SFT): OpenAI-style JSONL conversations -> a chat model, on pretraining's training loop.

`data` (read, check, reject, split, pack), `trainer` (`finetune`), `confusion` (language-confusion pass rate),
`cli` (`vernacular sft`); `demo/` holds the embedded demo conversations (`<iso639-3>.jsonl`, CC0).
"""
