"""The documents the RAG tests index, and the question only one of them answers.

The festival, its town and its mascot are invented, so a model can only answer from the retrieved text;
the answer ("Pim") appears there verbatim, which a 135M model copies reliably. The answering document is
not the first one: embeddings that failed to rank (all ties) would return the first. The question's wording
matters to SmolLM2-135M: given the answering document, "What is the Zorblax festival's mascot called?" got
"Pim" under 3 of 3 prompt styles tried (LlamaIndex's QA template, a system-message context, a user-message
context), "What is the name of the mascot of the Zorblax festival?" under 1 of 3.
"""
DOCS = [
    "Quillmere's bakery sells a famous cake called the Velvet Spiral, made with cardamom and figs.",
    "The Quillmere lighthouse was painted green in 1931 and has never been repainted since.",
    "The Zorblax festival is held every spring in the town of Quillmere. Its mascot is a purple heron named Pim.",
    "Quillmere's harbour freezes every winter, and the ferry to the mainland stops until March.",
]
ANSWERING_DOC = DOCS[2]
QUESTION = "What is the Zorblax festival's mascot called?"
ANSWER = "Pim"
