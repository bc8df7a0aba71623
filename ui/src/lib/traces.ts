import type { TraceEvent } from './api/types';

/** `datetime-local` input value → RFC 3339 for the trace API ('' → undefined). */
export function localToRfc3339(v: string): string | undefined {
  if (!v) return undefined;
  const d = new Date(v);
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString();
}

export interface PromptMessage {
  role: string;
  content: string;
}

/** What an `llm_call` event says was asked and answered. */
export interface LlmContent {
  /** The request's messages, when they could be read back as a list of messages. */
  messages: PromptMessage[] | null;
  /** The prompt as stored: JSON text of the messages, possibly cut short. */
  prompt: string;
  reply: string;
  /** Whether the host cut the prompt or the reply to `[llm] trace_content_bytes`. */
  truncated: boolean;
}

function text(content: unknown): string {
  if (typeof content === 'string') return content;
  // Content parts: [{type: 'text', text: '…'}, {type: 'image_url', …}]
  if (Array.isArray(content)) {
    return content
      .map((part) => (part && typeof part === 'object' && typeof (part as { text?: unknown }).text === 'string' ? (part as { text: string }).text : `[${(part as { type?: string })?.type ?? 'part'}]`))
      .join('\n');
  }
  return content == null ? '' : JSON.stringify(content);
}

// The host marks a cut with a trailing "…" (see host-service/src/llm/gateway.rs `truncate`).
const CUT = '…';

/** Reads the prompt and reply out of an `llm_call` trace event's payload. */
export function llmContent(e: TraceEvent): LlmContent | null {
  if (e.kind !== 'llm_call') return null;
  const p = (e.payload ?? {}) as Record<string, unknown>;
  const prompt = typeof p.messages === 'string' ? p.messages : p.messages == null ? '' : JSON.stringify(p.messages);
  const reply = typeof p.response === 'string' ? p.response : '';
  let messages: PromptMessage[] | null = null;
  try {
    const parsed: unknown = typeof p.messages === 'string' ? JSON.parse(p.messages) : p.messages;
    if (Array.isArray(parsed)) {
      messages = parsed.map((m) => ({
        role: typeof m?.role === 'string' ? m.role : '?',
        content: text(m?.content),
      }));
    }
  } catch {
    // Cut short, so no longer JSON: shown as it is.
  }
  return { messages, prompt, reply, truncated: prompt.endsWith(CUT) || reply.endsWith(CUT) };
}
