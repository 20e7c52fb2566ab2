from shapshift.prompting import Demonstration, build_prompt, encode_prompt


def test_trailing_space_moves_into_the_text(smollm2):
    _, tok = smollm2
    parts = build_prompt("great film", "Review: {input}\nSentiment:", tok)
    assert (parts.prefix, parts.text, parts.suffix) == ("Review:", " great film", "\nSentiment:")
    enc = encode_prompt(parts, tok)
    assert enc.input_ids == tok(" great film", add_special_tokens=False)["input_ids"]
    # the parts' tokens equal the joint tokenisation of the prompt for this template
    assert enc.ids == tok(parts.prompt, add_special_tokens=True)["input_ids"]


def test_instruction_and_demonstrations_are_context(smollm2):
    _, tok = smollm2
    demos = [Demonstration("loved it", " positive"), Demonstration("boring", " negative")]
    plain = build_prompt("fine", "Review: {input}\nSentiment:", tok)
    few = build_prompt("fine", "Review: {input}\nSentiment:", tok, instruction="Classify.", demonstrations=demos)
    assert few.text == plain.text
    assert few.prefix.startswith("Classify.\n\nReview: loved it\nSentiment: positive\n\nReview: boring")
    chat = build_prompt("fine", "Review: {input}\nSentiment:", tok, chat=True, demonstrations=demos)
    assert chat.text == plain.text and "<|im_start|>user" in chat.prefix and chat.suffix.endswith("assistant\n")
    enc = encode_prompt(chat, tok)
    assert enc.prefix_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
