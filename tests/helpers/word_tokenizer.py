"""A tiny Hugging Face tokenizer directory built offline (tokenizers' WordLevel model, whitespace and
punctuation split), standing in for a release's tokenizer files."""
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

# every word of the world model's reward question and answers, and a few of instructions
QUESTION_WORDS = ("Is", "the", "task", "'", "completed", "?", "Answer", ":", "Yes", "No")


def save_word_tokenizer(words, path) -> tuple[str, dict[str, int]]:
    """Writes the tokenizer of `words` (ids 0 <pad>, 1 <unk>, then 2 + i) into `path`: (path, vocab)."""
    vocab = {"<pad>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(dict.fromkeys(words))}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>").save_pretrained(str(path))
    return str(path), vocab
