-- The whole answer of a chat completion, as OpenAI-shaped choices: every choice's assistant
-- message (content, tool calls, refusal, reasoning text), finish reason and log probabilities.
-- NULL for conversation turns (their reply is reply_content) and for jobs recorded before it
-- existed. reply_content and finish_reason keep choice 0's, so every reader of a text reply reads
-- it where it always was.
ALTER TABLE jobs ADD COLUMN reply_choices jsonb;
