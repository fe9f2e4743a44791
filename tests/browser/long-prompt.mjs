// The request the browser benchmark repeats for long prompts (`--message-repeat`) and the
// long-prompt test repeats 12 times (about 44 tokens each): one text, so the test's recorded
// answer and the benchmark's figures are about the same prompt.
export const ESSAY = "Write a long, detailed essay about the history of the printing press in Europe, "
  + "covering Gutenberg, the spread of print shops, the books they made, and how printing changed "
  + "religion, science and politics over the following three centuries.";
