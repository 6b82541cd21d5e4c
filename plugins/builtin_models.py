"""Built-in plugin: the native model implementations."""
from pagedllm.plugins.hookspecs import hookimpl


@hookimpl
def register_models(register):
    from pagedllm.models import baichuan, bert, causal_lm, chatglm, falcon, gemma, gpt2, gpt_neox, gptj, llama, mixtral, opt, phi, phi3, qwen3

    register("LlamaForCausalLM", llama.LlamaForCausalLM)
    register("MistralForCausalLM", llama.MistralForCausalLM)
    register("Qwen2ForCausalLM", llama.Qwen2ForCausalLM)
    register("GPT2LMHeadModel", gpt2.GPT2LMHeadModel)
    register("OPTForCausalLM", opt.OPTForCausalLM)
    register("GPTNeoXForCausalLM", gpt_neox.GPTNeoXForCausalLM)
    register("PhiForCausalLM", phi.PhiForCausalLM)
    register("GPTJForCausalLM", gptj.GPTJForCausalLM)
    register("FalconForCausalLM", falcon.FalconForCausalLM)
    register("BaiChuanForCausalLM", baichuan.BaiChuanForCausalLM)  # Baichuan-7B
    register("BaichuanForCausalLM", baichuan.BaichuanForCausalLM)  # Baichuan-13B, Baichuan2
    register("Qwen3ForCausalLM", qwen3.Qwen3ForCausalLM)
    register("GemmaForCausalLM", gemma.GemmaForCausalLM)
    register("Gemma2ForCausalLM", gemma.Gemma2ForCausalLM)
    register("Phi3ForCausalLM", phi3.Phi3ForCausalLM)
    register("MixtralForCausalLM", mixtral.MixtralForCausalLM)
    register("ChatGLMModel", chatglm.ChatGLMForCausalLM)  # ChatGLM2/3 configs name the base model class
    register("ChatGLMForConditionalGeneration", chatglm.ChatGLMForCausalLM)
    # encoders: pooling models (embeddings), no LM head
    register("BertModel", bert.BertModel)
    register("RobertaModel", bert.RobertaModel)
    register("XLMRobertaModel", bert.RobertaModel)
    # decoders saved without their LM head: embedding models (LAST-token pooling)
    for family in (llama.LlamaForCausalLM, llama.MistralForCausalLM, llama.Qwen2ForCausalLM, qwen3.Qwen3ForCausalLM):
        register(family.__name__.replace("ForCausalLM", "Model"), causal_lm.headless(family))
    register("JinaBertModel", bert.JinaBertModel)  # jina-embeddings-v2 (its remote code's class names)
    register("JinaBertForMaskedLM", bert.JinaBertModel)
