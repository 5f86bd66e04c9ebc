//! Reading tool calls out of OpenAI-shaped messages, as a client does; shared by the API and
//! fault tests.

use serde_json::Value;

/// A message's tool calls as (id, name, arguments), in order.
pub fn calls_of(message: &Value) -> Vec<(String, String, String)> {
    message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|call| {
            (
                call["id"].as_str().unwrap().to_owned(),
                call["function"]["name"].as_str().unwrap().to_owned(),
                call["function"]["arguments"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}
