// Package apispec holds the documents the root package describes its
// routes and its socket with: JSON Schema (the 2020-12 subset that is also
// valid draft-07, as AsyncAPI's schemas are), OpenAPI 3.1 and AsyncAPI 3.0.
// The types are plain values, encoded with encoding/json; the package imports
// nothing of the root package.
package apispec

import "encoding/json"

// Schema is a JSON Schema. Its keywords are those both JSON Schema 2020-12
// (OpenAPI 3.1) and draft-07 (AsyncAPI 3.0) read alike: a $ref has no
// sibling keywords, and arrays use items only.
type Schema struct {
	Ref         string `json:"$ref,omitempty"`
	Title       string `json:"title,omitempty"`
	Description string `json:"description,omitempty"`
	// Type is a type name or a list of them, for example
	// []string{"string", "null"}.
	Type   any    `json:"type,omitempty"`
	Format string `json:"format,omitempty"`
	// Const is the JSON of the only valid value; nil means none.
	Const json.RawMessage   `json:"const,omitempty"`
	Enum  []json.RawMessage `json:"enum,omitempty"`

	Properties map[string]*Schema `json:"properties,omitempty"`
	Required   []string           `json:"required,omitempty"`
	// AdditionalProperties is nil (any), false, or the schema of the
	// values of the keys Properties does not name.
	AdditionalProperties any     `json:"additionalProperties,omitempty"`
	Items                *Schema `json:"items,omitempty"`

	MinLength        *int     `json:"minLength,omitempty"`
	MaxLength        *int     `json:"maxLength,omitempty"`
	Pattern          string   `json:"pattern,omitempty"`
	Minimum          *float64 `json:"minimum,omitempty"`
	Maximum          *float64 `json:"maximum,omitempty"`
	ExclusiveMinimum *float64 `json:"exclusiveMinimum,omitempty"`
	ExclusiveMaximum *float64 `json:"exclusiveMaximum,omitempty"`
	MinItems         *int     `json:"minItems,omitempty"`
	MaxItems         *int     `json:"maxItems,omitempty"`
	MinProperties    *int     `json:"minProperties,omitempty"`
	MaxProperties    *int     `json:"maxProperties,omitempty"`

	AnyOf []*Schema `json:"anyOf,omitempty"`
	AllOf []*Schema `json:"allOf,omitempty"`

	ReadOnly bool `json:"readOnly,omitempty"`
	// PrimaryKey, on the schema of a stream's model, is the JSON name of
	// the property that holds the object's primary key (x-primary-key);
	// "" when the key is not serialized or the schema is not a model's.
	PrimaryKey      string `json:"x-primary-key,omitempty"`
	ContentEncoding string `json:"contentEncoding,omitempty"`
	Examples        []any  `json:"examples,omitempty"`
}

// Ref returns a schema that refers to the component name of a document's
// components.schemas.
func Ref(name string) *Schema { return &Schema{Ref: "#/components/schemas/" + name} }

// Const returns the schema of the one value v.
func Const(v any) *Schema {
	b, _ := json.Marshal(v)
	return &Schema{Const: b}
}

// Enum returns the values as JSON, for Schema.Enum.
func Enum[T any](values ...T) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(values))
	for _, v := range values {
		b, _ := json.Marshal(v)
		out = append(out, b)
	}
	return out
}

// Int returns a pointer to n, for the bounds of a Schema.
func Int(n int) *int { return &n }

// Float returns a pointer to n, for the bounds of a Schema.
func Float(n float64) *float64 { return &n }

// Info is the info object of both documents.
type Info struct {
	Title       string `json:"title"`
	Version     string `json:"version"`
	Description string `json:"description,omitempty"`
}

// OpenAPI is an OpenAPI 3.1 document.
type OpenAPI struct {
	OpenAPI           string               `json:"openapi"`
	Info              Info                 `json:"info"`
	JSONSchemaDialect string               `json:"jsonSchemaDialect,omitempty"`
	Servers           []Server             `json:"servers,omitempty"`
	Tags              []Tag                `json:"tags,omitempty"`
	Paths             map[string]*PathItem `json:"paths"`
	Components        Components           `json:"components"`
}

// Server is the server object of OpenAPI.
type Server struct {
	URL         string `json:"url"`
	Description string `json:"description,omitempty"`
}

// Tag groups the operations of one stream.
type Tag struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
}

// PathItem holds the operations of one path.
type PathItem struct {
	Parameters []*Parameter `json:"parameters,omitempty"`
	Get        *Operation   `json:"get,omitempty"`
	Put        *Operation   `json:"put,omitempty"`
	Post       *Operation   `json:"post,omitempty"`
	Delete     *Operation   `json:"delete,omitempty"`
	Options    *Operation   `json:"options,omitempty"`
	Head       *Operation   `json:"head,omitempty"`
	Patch      *Operation   `json:"patch,omitempty"`
}

// Operation is one method of a path.
type Operation struct {
	OperationID string               `json:"operationId"`
	Summary     string               `json:"summary,omitempty"`
	Description string               `json:"description,omitempty"`
	Tags        []string             `json:"tags,omitempty"`
	Parameters  []*Parameter         `json:"parameters,omitempty"`
	RequestBody *RequestBody         `json:"requestBody,omitempty"`
	Responses   map[string]*Response `json:"responses"`
}

// Parameter is a path, query or header parameter.
type Parameter struct {
	Name        string  `json:"name"`
	In          string  `json:"in"`
	Description string  `json:"description,omitempty"`
	Required    bool    `json:"required,omitempty"`
	Schema      *Schema `json:"schema"`
}

// RequestBody is the body of a request.
type RequestBody struct {
	Description string               `json:"description,omitempty"`
	Required    bool                 `json:"required,omitempty"`
	Content     map[string]MediaType `json:"content"`
}

// MediaType is the schema of a body of one media type.
type MediaType struct {
	Schema *Schema `json:"schema"`
}

// Response is one status of an operation, or a component.
type Response struct {
	Ref         string               `json:"$ref,omitempty"`
	Description string               `json:"description,omitempty"`
	Headers     map[string]*Header   `json:"headers,omitempty"`
	Content     map[string]MediaType `json:"content,omitempty"`
}

// Header is a response header.
type Header struct {
	Description string  `json:"description,omitempty"`
	Schema      *Schema `json:"schema"`
}

// Components are the reusable parts of the OpenAPI document.
type Components struct {
	Schemas   map[string]*Schema   `json:"schemas,omitempty"`
	Responses map[string]*Response `json:"responses,omitempty"`
}

// AsyncAPI is an AsyncAPI 3.0 document.
type AsyncAPI struct {
	AsyncAPI           string              `json:"asyncapi"`
	Info               Info                `json:"info"`
	DefaultContentType string              `json:"defaultContentType"`
	Channels           map[string]*Channel `json:"channels"`
	Operations         map[string]*AsyncOp `json:"operations"`
	Components         AsyncComponents     `json:"components"`
}

// Channel is a channel of AsyncAPI: here the one WebSocket.
type Channel struct {
	Address     string                     `json:"address"`
	Title       string                     `json:"title,omitempty"`
	Description string                     `json:"description,omitempty"`
	Messages    map[string]*Reference      `json:"messages"`
	Bindings    map[string]json.RawMessage `json:"bindings,omitempty"`
	// CloseCodes are the close codes the server sends (x-close-codes).
	CloseCodes []CloseCode `json:"x-close-codes,omitempty"`
}

// CloseCode is a WebSocket close code the server sends, with its reasons.
type CloseCode struct {
	Code    int      `json:"code"`
	Meaning string   `json:"meaning"`
	Reasons []string `json:"reasons,omitempty"`
}

// Reference is a $ref.
type Reference struct {
	Ref string `json:"$ref"`
}

// AsyncOp is an operation of AsyncAPI: "receive" for what clients send,
// "send" for what the server sends unasked.
type AsyncOp struct {
	Action      string      `json:"action"`
	Channel     Reference   `json:"channel"`
	Title       string      `json:"title,omitempty"`
	Summary     string      `json:"summary,omitempty"`
	Description string      `json:"description,omitempty"`
	Messages    []Reference `json:"messages"`
	Reply       *AsyncReply `json:"reply,omitempty"`
	Tags        []Tag       `json:"tags,omitempty"`
}

// AsyncReply is the reply of a receive operation.
type AsyncReply struct {
	Channel  Reference   `json:"channel"`
	Messages []Reference `json:"messages"`
}

// Message is a message component of AsyncAPI.
type Message struct {
	Name        string  `json:"name"`
	Title       string  `json:"title,omitempty"`
	Summary     string  `json:"summary,omitempty"`
	Description string  `json:"description,omitempty"`
	Payload     *Schema `json:"payload"`
}

// AsyncComponents are the reusable parts of the AsyncAPI document.
type AsyncComponents struct {
	Schemas  map[string]*Schema  `json:"schemas,omitempty"`
	Messages map[string]*Message `json:"messages,omitempty"`
}
